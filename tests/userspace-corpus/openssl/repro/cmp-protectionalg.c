/* CVE-2026-63076: a CMP message whose password-based-MAC protectionAlg
 * carries a parameter that is not a SEQUENCE made OSSL_CMP_validate_msg()
 * dereference an invalid pointer. A child process validates such a message
 * (a BOOLEAN parameter) each round; prints protection=crash before the
 * fix, protection=rejected after. */
#include <openssl/cmp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The start of struct ossl_cmp_pkiheader_st (crypto/cmp/cmp_local.h). */
struct header_start {
	ASN1_INTEGER *pvno;
	GENERAL_NAME *sender, *recipient;
	ASN1_GENERALIZEDTIME *messageTime;
	X509_ALGOR *protectionAlg;
};

static OSSL_CMP_MSG *captured;

static OSSL_CMP_MSG *capture(OSSL_CMP_CTX *ctx, const OSSL_CMP_MSG *req)
{
	(void)ctx;
	captured = OSSL_CMP_MSG_dup(req);
	return NULL; /* no server: the session ends here */
}

static int quiet(const char *func, const char *file, int line,
		 OSSL_CMP_severity level, const char *msg)
{
	(void)func, (void)file, (void)line, (void)level, (void)msg;
	return 1;
}

static const char *check(void)
{
	static const unsigned char secret[] = "pass", ref[] = "user";
	OSSL_CMP_CTX *ctx = OSSL_CMP_CTX_new(NULL, NULL);
	if (ctx == NULL || !OSSL_CMP_CTX_set_log_cb(ctx, quiet)
	    || !OSSL_CMP_CTX_set1_secretValue(ctx, secret, 4)
	    || !OSSL_CMP_CTX_set1_referenceValue(ctx, ref, 4)
	    || !OSSL_CMP_CTX_set_transfer_cb(ctx, capture))
		return "setup-failed";
	captured = NULL;
	OSSL_CMP_exec_GENM_ses(ctx);
	if (captured == NULL)
		return "no-request";
	struct header_start *h = (struct header_start *)OSSL_CMP_MSG_get0_header(captured);
	X509_ALGOR_set0(h->protectionAlg, OBJ_nid2obj(NID_id_PasswordBasedMAC),
			V_ASN1_BOOLEAN, (void *)1);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0)
		_exit(OSSL_CMP_validate_msg(ctx, captured) ? 1 : 0);
	int status = 0;
	waitpid(pid, &status, 0);
	OSSL_CMP_MSG_free(captured);
	OSSL_CMP_CTX_free(ctx);
	if (WIFSIGNALED(status))
		return "crash";
	return WEXITSTATUS(status) ? "accepted" : "rejected";
}

int main(void)
{
	for (;;) {
		printf("protection=%s\n", check());
		fflush(stdout);
		usleep(20000);
	}
}
