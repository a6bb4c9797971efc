/* CVE-2026-63074: extraCerts of a received CMP message whose protection
 * does not verify stayed in the context's untrusted certificates, so a peer
 * could grow them without bound. Each round a client session receives a
 * message carrying one certificate and a broken MAC; prints the number of
 * untrusted certificates left afterwards: untrusted=1 before the fix,
 * untrusted=0 after. */
#include <openssl/cmp.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <unistd.h>

/* The start of struct ossl_cmp_msg_st (crypto/cmp/cmp_local.h). */
struct msg_start {
	OSSL_CMP_PKIHEADER *header;
	void *body;
	ASN1_BIT_STRING *protection;
	STACK_OF(X509) *extraCerts;
};

static X509 *cert;

static X509 *make_cert(void)
{
	EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"extra", -1, -1, 0);
	X509_set_version(x, X509_VERSION_3);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_set_subject_name(x, n);
	X509_set_issuer_name(x, n);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	X509_sign(x, key, EVP_sha256());
	X509_NAME_free(n);
	EVP_PKEY_free(key);
	return x;
}

/* The "server" answers with the request itself, one certificate added and
 * its MAC broken. */
static OSSL_CMP_MSG *answer(OSSL_CMP_CTX *ctx, const OSSL_CMP_MSG *req)
{
	(void)ctx;
	OSSL_CMP_MSG *rep = OSSL_CMP_MSG_dup(req);
	struct msg_start *m = (struct msg_start *)rep;
	if (m->extraCerts == NULL)
		m->extraCerts = sk_X509_new_null();
	X509_up_ref(cert);
	sk_X509_push(m->extraCerts, cert);
	m->protection->data[0] ^= 1;
	return rep;
}

static int quiet(const char *func, const char *file, int line,
		 OSSL_CMP_severity level, const char *msg)
{
	(void)func, (void)file, (void)line, (void)level, (void)msg;
	return 1;
}

static int untrusted_left(void)
{
	static const unsigned char secret[] = "pass", ref[] = "user";
	OSSL_CMP_CTX *ctx = OSSL_CMP_CTX_new(NULL, NULL);
	if (ctx == NULL || !OSSL_CMP_CTX_set_log_cb(ctx, quiet)
	    || !OSSL_CMP_CTX_set1_secretValue(ctx, secret, 4)
	    || !OSSL_CMP_CTX_set1_referenceValue(ctx, ref, 4)
	    || !OSSL_CMP_CTX_set_transfer_cb(ctx, answer))
		return -1;
	OSSL_CMP_exec_GENM_ses(ctx);
	int n = sk_X509_num(OSSL_CMP_CTX_get0_untrusted(ctx));
	OSSL_CMP_CTX_free(ctx);
	return n;
}

int main(void)
{
	cert = make_cert();
	for (;;) {
		printf("untrusted=%d\n", untrusted_left());
		fflush(stdout);
		usleep(20000);
	}
}
