/* evp_cost.c - what one ChaCha20-Poly1305 message costs in OpenSSL's EVP API, as
 * tunnelpy/protocol/_aead.pyx seals and opens it: per message EVP_CipherInit_ex with the nonce
 * only (the key was set once), one EVP_CipherUpdate, EVP_CipherFinal_ex and the tag
 * (EVP_CTRL_AEAD_GET_TAG, or SET_TAG before the update when opening). Prints microseconds per
 * message for several plaintext sizes, so the fixed part (size 0) and the per-byte part can be
 * read apart; the same 1420-byte update streamed with no per-message work (what
 * `openssl speed -evp chacha20-poly1305` measures); and a 1420-byte seal through the
 * provider's own functions (OSSL_PROVIDER_query_operation), which skips EVP's parameter
 * handling: the most that bypassing EVP could save (tunnelpy does not do it).
 *
 *   cc -O2 bench/c/evp_cost.c -o /tmp/evp_cost -lcrypto && /tmp/evp_cost
 *
 * docs/performance.md ("Session 24") has the figures of this machine. */
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Open 1420-byte messages as Opener._open does (tag set before the update). */
static int open1420(const unsigned char *key, const unsigned char *in)
{
    static unsigned char iv[12], sealed[1420 + 16], plain[1420];
    EVP_CIPHER_CTX *e = EVP_CIPHER_CTX_new(), *d = EVP_CIPHER_CTX_new();
    int outl, i, bad = 0;
    double t0;

    if (e == NULL || d == NULL
        || EVP_CipherInit_ex(e, EVP_chacha20_poly1305(), NULL, key, NULL, 1) != 1
        || EVP_CipherInit_ex(d, EVP_chacha20_poly1305(), NULL, key, NULL, 0) != 1)
        return 1;
    EVP_CipherInit_ex(e, NULL, NULL, NULL, iv, 1);
    EVP_CipherUpdate(e, sealed, &outl, in, 1420);
    EVP_CipherFinal_ex(e, sealed + 1420, &outl);
    EVP_CIPHER_CTX_ctrl(e, EVP_CTRL_AEAD_GET_TAG, 16, sealed + 1420);
    t0 = now();
    for (i = 0; i < 1000000; i++) {
        EVP_CipherInit_ex(d, NULL, NULL, NULL, iv, 0);
        EVP_CIPHER_CTX_ctrl(d, EVP_CTRL_AEAD_SET_TAG, 16, sealed + 1420);
        EVP_CipherUpdate(d, plain, &outl, sealed, 1420);
        bad += EVP_CipherFinal_ex(d, plain + 1420, &outl) != 1;
    }
    printf(" 1420 bytes opened: %.3f us per message (%d failed)\n", now() - t0, bad);
    EVP_CIPHER_CTX_free(e);
    EVP_CIPHER_CTX_free(d);
    return bad != 0;
}

/* The same 1420-byte seal through the provider's dispatch table instead of EVP's wrappers;
 * its bytes are compared with EVP's. */
static int direct(EVP_CIPHER_CTX *c, const unsigned char *key, const unsigned char *in)
{
    static unsigned char iv[12], a[1420 + 16], b[1420 + 16];
    EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    const OSSL_PROVIDER *prov;
    const OSSL_ALGORITHM *alg;
    const OSSL_DISPATCH *f = NULL;
    OSSL_FUNC_cipher_newctx_fn *newctx = NULL;
    OSSL_FUNC_cipher_encrypt_init_fn *init = NULL;
    OSSL_FUNC_cipher_update_fn *update = NULL;
    OSSL_FUNC_cipher_final_fn *final = NULL;
    OSSL_FUNC_cipher_get_ctx_params_fn *get = NULL;
    OSSL_FUNC_cipher_freectx_fn *freectx = NULL;
    OSSL_PARAM tag[2];
    void *algctx;
    size_t len;
    int no_cache, i, outl;
    double t0;

    if (cipher == NULL)
        return 1;
    prov = EVP_CIPHER_get0_provider(cipher);
    for (alg = OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_cache);
         alg != NULL && alg->algorithm_names != NULL; alg++)
        if (strncasecmp(alg->algorithm_names, "ChaCha20-Poly1305", 17) == 0
            && (alg->algorithm_names[17] == 0 || alg->algorithm_names[17] == ':')) {
            f = alg->implementation;
            break;
        }
    for (; f != NULL && f->function_id != 0; f++)
        switch (f->function_id) {
        case OSSL_FUNC_CIPHER_NEWCTX: newctx = OSSL_FUNC_cipher_newctx(f); break;
        case OSSL_FUNC_CIPHER_ENCRYPT_INIT: init = OSSL_FUNC_cipher_encrypt_init(f); break;
        case OSSL_FUNC_CIPHER_UPDATE: update = OSSL_FUNC_cipher_update(f); break;
        case OSSL_FUNC_CIPHER_FINAL: final = OSSL_FUNC_cipher_final(f); break;
        case OSSL_FUNC_CIPHER_GET_CTX_PARAMS: get = OSSL_FUNC_cipher_get_ctx_params(f); break;
        case OSSL_FUNC_CIPHER_FREECTX: freectx = OSSL_FUNC_cipher_freectx(f); break;
        }
    if (!newctx || !init || !update || !final || !get || !freectx)
        return 1;
    algctx = newctx(OSSL_PROVIDER_get0_provider_ctx(prov));
    init(algctx, key, 32, NULL, 0, NULL);
    t0 = now();
    for (i = 0; i < 1000000; i++) {
        memcpy(iv + 4, &i, sizeof i);
        init(algctx, NULL, 0, iv, 12, NULL);
        update(algctx, b, &len, sizeof b, in, 1420);
        final(algctx, b + 1420, &len, 16);
        tag[0] = OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, b + 1420, 16);
        tag[1] = OSSL_PARAM_construct_end();
        get(algctx, tag);
    }
    printf(" 1420 bytes sealed through the provider's functions: %.3f us per message\n",
           now() - t0);
    /* the last message once more through EVP: the same bytes? */
    EVP_CipherInit_ex(c, NULL, NULL, NULL, iv, 1);
    EVP_CipherUpdate(c, a, &outl, in, 1420);
    EVP_CipherFinal_ex(c, a + 1420, &outl);
    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, a + 1420);
    printf(" the same bytes as EVP: %s\n", memcmp(a, b, sizeof a) == 0 ? "yes" : "NO");
    freectx(algctx);
    EVP_CIPHER_free(cipher);
    return memcmp(a, b, sizeof a) != 0;
}

int main(void)
{
    static unsigned char key[32] = {1}, iv[12], in[8192], out[8192 + 16];
    static const int sizes[] = {0, 64, 256, 1420, 8192};
    int outl, s, i;
    double t0, t1;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();

    memset(in, 7, sizeof in);
    if (c == NULL || EVP_CipherInit_ex(c, EVP_chacha20_poly1305(), NULL, key, NULL, 1) != 1)
        return 1;
    for (s = 0; s < (int)(sizeof sizes / sizeof sizes[0]); s++) {
        int n = sizes[s], count = n > 4096 ? 200000 : 1000000;

        t0 = now();
        for (i = 0; i < count; i++) {
            memcpy(iv + 4, &i, sizeof i); /* a new nonce per message, as WireGuard's counter */
            EVP_CipherInit_ex(c, NULL, NULL, NULL, iv, 1);
            if (n)
                EVP_CipherUpdate(c, out, &outl, in, n);
            EVP_CipherFinal_ex(c, out + n, &outl);
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, out + n);
        }
        t1 = now();
        printf("%5d bytes: %.3f us per message, %5.0f MB/s\n", n, (t1 - t0) / count * 1e6,
               n * (double)count / (t1 - t0) / 1e6);
    }
    EVP_CipherInit_ex(c, NULL, NULL, NULL, iv, 1);
    t0 = now();
    for (i = 0; i < 1000000; i++)
        EVP_CipherUpdate(c, out, &outl, in, 1420);
    t1 = now();
    printf(" 1420 bytes streamed (no per-message work): %.3f us each\n", (t1 - t0));
    return direct(c, key, in) | open1420(key, in);
}
