/* CVE-2026-75803: ChaCha20-Poly1305 through EVP_Cipher() accepted an empty
 * ciphertext with any tag. Decrypts an empty message under a tag that is
 * wrong and prints whether it was accepted: forged=1 before the fix,
 * forged=0 after. */
#include <openssl/evp.h>
#include <stdio.h>
#include <unistd.h>

static int forged(void)
{
	unsigned char key[32] = { 1 }, iv[12] = { 2 }, tag[16] = { 0 }, out[16];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
	int ok = ctx != NULL && c != NULL
		&& EVP_DecryptInit_ex2(ctx, c, key, iv, NULL)
		&& EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, sizeof tag, tag) > 0;
	int r = ok ? EVP_Cipher(ctx, out, (const unsigned char *)"", 0) : -1;
	/* The tag is checked at the end of the message. */
	if (r >= 0)
		r = EVP_Cipher(ctx, NULL, NULL, 0);
	EVP_CIPHER_free(c);
	EVP_CIPHER_CTX_free(ctx);
	return r >= 0;
}

int main(void)
{
	for (;;) {
		printf("forged=%d\n", forged());
		fflush(stdout);
		usleep(20000);
	}
}
