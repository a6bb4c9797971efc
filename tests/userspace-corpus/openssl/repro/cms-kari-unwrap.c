/* CVE-2026-63072 (OpenSSL 3.0.22): CMS_decrypt of a key-agreement
 * (ECDH) recipient whose key is wrapped with AES-WRAP-PAD sized the
 * unwrapped key's buffer by the length the cipher reports, and the unwrap
 * wrote 8 bytes past it when the wrapped key failed its integrity check.
 * Encrypts a message to an EC recipient made here, damages the wrapped
 * key, decrypts, and checks a guard after every OpenSSL allocation
 * (CRYPTO_set_mem_functions): overflow=1 before the fix, overflow=0
 * after. */
#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GUARD 16
static const unsigned char pattern = 0xa5;
static volatile int damaged;

struct head { size_t n; size_t pad; };

static void *guarded(size_t n)
{
	struct head *h = malloc(sizeof *h + n + GUARD);
	if (h == NULL)
		return NULL;
	h->n = n;
	memset((unsigned char *)(h + 1) + n, pattern, GUARD);
	return h + 1;
}

static void check(void *p)
{
	struct head *h = (struct head *)p - 1;
	const unsigned char *g = (unsigned char *)p + h->n;
	for (int i = 0; i < GUARD; i++)
		if (g[i] != pattern)
			damaged = 1;
}

static void *my_malloc(size_t n, const char *f, int l)
{
	(void)f; (void)l;
	return guarded(n);
}

static void my_free(void *p, const char *f, int l)
{
	(void)f; (void)l;
	if (p == NULL)
		return;
	check(p);
	free((struct head *)p - 1);
}

static void *my_realloc(void *p, size_t n, const char *f, int l)
{
	void *q;
	if (p == NULL)
		return my_malloc(n, f, l);
	check(p);
	q = guarded(n);
	if (q != NULL) {
		size_t old = ((struct head *)p - 1)->n;
		memcpy(q, p, old < n ? old : n);
	}
	free((struct head *)p - 1);
	return q;
}

static EVP_PKEY *key;
static X509 *cert;
static unsigned char *der;
static long der_len;

/* An EC key and a self-signed certificate for it. */
static int make_recipient(void)
{
	X509_NAME *name;
	key = EVP_EC_gen("P-256");
	cert = X509_new();
	if (key == NULL || cert == NULL)
		return 0;
	ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
	X509_gmtime_adj(X509_getm_notBefore(cert), 0);
	X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
	name = X509_get_subject_name(cert);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"r", -1, -1, 0);
	X509_set_issuer_name(cert, name);
	return X509_set_pubkey(cert, key) && X509_sign(cert, key, EVP_sha256()) > 0;
}

/* The message enveloped for the recipient, its CEK wrapped with
 * AES-128-WRAP-PAD, as DER. */
static int envelope(void)
{
	BIO *in = BIO_new_mem_buf("secret", 6);
	CMS_ContentInfo *cms = CMS_encrypt(NULL, NULL, EVP_aes_128_cbc(), CMS_PARTIAL | CMS_BINARY);
	CMS_RecipientInfo *ri;
	int ok;
	if (in == NULL || cms == NULL)
		return 0;
	ri = CMS_add1_recipient_cert(cms, cert, CMS_KEY_PARAM);
	ok = ri != NULL
		&& EVP_EncryptInit_ex(CMS_RecipientInfo_kari_get0_ctx(ri), EVP_aes_128_wrap_pad(), NULL, NULL, NULL)
		&& CMS_final(cms, in, NULL, CMS_BINARY);
	if (ok) {
		der = NULL;
		der_len = i2d_CMS_ContentInfo(cms, &der);
		ok = der_len > 0;
	}
	CMS_ContentInfo_free(cms);
	BIO_free(in);
	return ok;
}

/* Decrypts `msg`; 1 if it decrypted. */
static int decrypt(const unsigned char *msg, long len)
{
	const unsigned char *p = msg;
	CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, len);
	BIO *out = BIO_new(BIO_s_mem());
	int ok = cms != NULL && out != NULL && CMS_decrypt(cms, key, cert, NULL, out, CMS_BINARY);
	CMS_ContentInfo_free(cms);
	BIO_free(out);
	return ok;
}

static unsigned char *broken;

/* The wrapped CEK is the one 24-byte OCTET STRING whose damage makes the
 * decryption fail; keep a copy of the message with it damaged. */
static int damage_wrapped_key(void)
{
	if (!decrypt(der, der_len))
		return 0;
	broken = malloc(der_len);
	for (long i = 0; i + 2 + 24 <= der_len; i++) {
		if (der[i] != 0x04 || der[i + 1] != 24)
			continue;
		memcpy(broken, der, der_len);
		broken[i + 2 + 5] ^= 0x40;
		if (!decrypt(broken, der_len))
			return 1;
	}
	return 0;
}

int main(void)
{
	if (!CRYPTO_set_mem_functions(my_malloc, my_realloc, my_free)
	    || !make_recipient() || !envelope() || !damage_wrapped_key()) {
		printf("overflow=setup-failed\n");
		return 1;
	}
	damaged = 0;
	for (;;) {
		damaged = 0;
		decrypt(broken, der_len);
		printf("overflow=%d\n", damaged);
		fflush(stdout);
		usleep(20000);
	}
}
