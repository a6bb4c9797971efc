/* OpenSSL PR 32427 (3.0.22, no CVE): AES-CCM decryption of an empty
 * ciphertext finished with EVP_DecryptFinal_ex() did not check the tag.
 * Decrypts an empty message under a wrong tag and prints whether it was
 * accepted: forged=1 before the fix, forged=0 after. */
#include <openssl/evp.h>
#include <stdio.h>
#include <unistd.h>

static int forged(void)
{
	unsigned char key[16] = { 1 }, iv[12] = { 2 }, tag[16] = { 0 }, out[16];
	int outl = 0;
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, "AES-128-CCM", NULL);
	int ok = ctx != NULL && c != NULL
		&& EVP_DecryptInit_ex2(ctx, c, NULL, NULL, NULL)
		&& EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, sizeof iv, NULL) > 0
		&& EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, sizeof tag, tag) > 0
		&& EVP_DecryptInit_ex2(ctx, NULL, key, iv, NULL)
		/* The message length: none. */
		&& EVP_DecryptUpdate(ctx, NULL, &outl, NULL, 0)
		&& EVP_DecryptFinal_ex(ctx, out, &outl) == 1;
	EVP_CIPHER_free(c);
	EVP_CIPHER_CTX_free(ctx);
	return ok;
}

int main(void)
{
	for (;;) {
		printf("forged=%d\n", forged());
		fflush(stdout);
		usleep(20000);
	}
}
