/*
 * Multi-buffer modular exponentiation with AVX-512 IFMA: eight exponentiations at once, one per
 * 64-bit lane, all by the same exponent modulo the same odd modulus.
 *
 * That is exactly the shape of fedlora's heavy work: a partial decryption raises every ciphertext
 * of a vector to one secret exponent (2·Δ·s_i) modulo n², and an obfuscator pool raises random
 * bases to the public exponent n. Because every lane follows the same exponent, the eight lanes
 * share one control flow, which is what SIMD needs (the approach of Gueron and Krasnov's
 * "multi-buffer" RSA and of Intel's crypto_mb library; the code here is fedlora's own).
 *
 * Arithmetic: numbers are L limbs of 52 bits (vpmadd52luq / vpmadd52huq multiply 52-bit limbs
 * and add the low or high 52 bits of the 104-bit product to a 64-bit accumulator). Montgomery
 * multiplication in "almost Montgomery" form (Gueron 2012): with R = 2^(52·L) > 4N, inputs below
 * 2N give an output below 2N without the final conditional subtraction, so no step depends on
 * the values. The exponentiation is a fixed 5-bit window: every window costs five squarings and
 * one multiplication (by the table's entry 0 when the window is zero), and each table entry is
 * read by scanning the whole table with masks, so neither the sequence of operations nor the
 * memory addresses depend on the exponent's bits or on the bases. Only the exponent's length
 * (which the caller pads to a public bound) shapes the loop.
 *
 * Interface (CPython extension; the GIL is released while it computes):
 *   available() -> bool                        this CPU and OS run AVX-512 IFMA
 *   powmod(bases, count, exponent, modulus, rr, k0, limbs) -> bytes
 *       bases: count big-endian numbers of len(modulus) bytes, each below the modulus;
 *       exponent: big-endian, any length; modulus: odd, big-endian; rr: R² mod N, as wide as the
 *       modulus; k0: -N⁻¹ mod 2^52; limbs: L, with 52·L ≥ bits(N) + 2.
 *       Returns count results of len(modulus) bytes: base^exponent mod N, each below N.
 *   multiexp(bases, count, exponents, modulus, rr, k0, limbs) -> bytes
 *       PUBLIC operands only (see run_multi): bases as for powmod, count >= 1; exponents: count
 *       big-endian numbers of one width, concatenated. Returns eight numbers of len(modulus)
 *       bytes, each below N, whose product mod N is ∏ bases[i]^exponents[i].
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8
#define MAX_LIMBS 160 /* 8320 bits: n² of a 4096-bit Paillier key, with room */
#define WINDOW 5
#define TABLE (1 << WINDOW)
#define MASK52 ((uint64_t)0xFFFFFFFFFFFFFULL)

#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
#define HAVE_IFMA_CODE 1
#include <immintrin.h>
#define IFMA __attribute__((target("avx512f,avx512ifma")))

typedef __m512i V;

/* r = a·b·R⁻¹ mod N, almost: a, b < 2N give r < 2N. r may alias a or b; t has L vectors. */
IFMA static void amm(V *r, const V *a, const V *b, const V *n, V k0, int L, V *t)
{
    const V zero = _mm512_setzero_si512();
    const V mask = _mm512_set1_epi64((long long)MASK52);
    for (int j = 0; j < L; j++)
        t[j] = zero;
    for (int i = 0; i < L; i++) {
        const V bi = b[i];
        V x0 = _mm512_madd52lo_epu64(t[0], a[0], bi);
        const V m = _mm512_and_si512(_mm512_madd52lo_epu64(zero, x0, k0), mask);
        x0 = _mm512_madd52lo_epu64(x0, n[0], m); /* now ≡ 0 mod 2^52 */
        const V carry = _mm512_srli_epi64(x0, 52);
        /* t = (t + a·bi + m·N) / 2^52, limb j landing in slot j-1. Each slot gains at most four
         * 52-bit terms per iteration, so after L ≤ 160 iterations it holds < 2^62: no overflow. */
        for (int j = 1; j < L; j++) {
            V x = t[j];
            x = _mm512_madd52lo_epu64(x, a[j], bi);
            x = _mm512_madd52lo_epu64(x, n[j], m);
            x = _mm512_madd52hi_epu64(x, a[j - 1], bi);
            x = _mm512_madd52hi_epu64(x, n[j - 1], m);
            t[j - 1] = x;
        }
        t[0] = _mm512_add_epi64(t[0], carry);
        t[L - 1] = _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(zero, a[L - 1], bi), n[L - 1], m);
    }
    V c = zero; /* back to 52-bit limbs */
    for (int j = 0; j < L; j++) {
        const V x = _mm512_add_epi64(t[j], c);
        c = _mm512_srli_epi64(x, 52);
        r[j] = _mm512_and_si512(x, mask);
    }
}

/* r = table[index], reading every entry (constant-time in index). */
IFMA static void select_entry(V *r, const V *table, uint64_t index, int L)
{
    for (int j = 0; j < L; j++)
        r[j] = _mm512_setzero_si512();
    for (uint64_t k = 0; k < TABLE; k++) {
        /* all ones when k == index, else zero, without a branch */
        const uint64_t diff = k ^ index;
        const uint64_t is_zero = ((diff | (0 - diff)) >> 63) ^ 1;
        const V sel = _mm512_set1_epi64((long long)(0 - is_zero));
        const V *entry = table + (size_t)k * L;
        for (int j = 0; j < L; j++)
            r[j] = _mm512_or_si512(r[j], _mm512_and_si512(entry[j], sel));
    }
}

static int cpu_has_ifma(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512ifma");
}

/* The window of WINDOW bits ending at bit position `low` (bits low .. low+WINDOW-1). */
static uint64_t window_at(const unsigned char *exp, Py_ssize_t exp_len, Py_ssize_t low)
{
    uint64_t w = 0;
    for (int b = WINDOW - 1; b >= 0; b--) {
        const Py_ssize_t bit = low + b;
        const Py_ssize_t byte = exp_len - 1 - bit / 8;
        w = (w << 1) | (byte >= 0 ? (uint64_t)((exp[byte] >> (bit % 8)) & 1) : 0);
    }
    return w;
}

/* Big-endian bytes (width w) of lane `lane` into 52-bit limbs of a lane-interleaved vector. */
static void load_lane(uint64_t *v, int lane, const unsigned char *src, Py_ssize_t w, int L)
{
    for (int j = 0; j < L; j++)
        v[(size_t)j * LANES + lane] = 0;
    for (Py_ssize_t i = 0; i < w; i++) {
        const uint64_t byte = src[w - 1 - i];
        const Py_ssize_t bit = i * 8;
        const int j = (int)(bit / 52), off = (int)(bit % 52);
        if (j < L)
            v[(size_t)j * LANES + lane] |= (byte << off) & MASK52;
        if (off > 44 && j + 1 < L)
            v[(size_t)(j + 1) * LANES + lane] |= byte >> (52 - off);
    }
}

static void store_lane(unsigned char *dst, const uint64_t *v, int lane, Py_ssize_t w, int L)
{
    for (Py_ssize_t i = 0; i < w; i++) {
        const Py_ssize_t bit = i * 8;
        const int j = (int)(bit / 52), off = (int)(bit % 52);
        uint64_t byte = j < L ? v[(size_t)j * LANES + lane] >> off : 0;
        if (off > 44 && j + 1 < L)
            byte |= v[(size_t)(j + 1) * LANES + lane] << (52 - off);
        dst[w - 1 - i] = (unsigned char)(byte & 0xFF);
    }
}

typedef struct {
    const unsigned char *bases, *exp, *mod, *rr;
    unsigned char *out;
    Py_ssize_t count, exp_len, width;
    uint64_t k0;
    int L;
} Job;

/* The whole batch, eight lanes at a time; returns 0, or -1 when out of memory. */
IFMA static int run(const Job *job)
{
    const int L = job->L;
    const size_t vec = (size_t)L * sizeof(V);
    V *mem = aligned_alloc(64, vec * (TABLE + 7));
    if (mem == NULL)
        return -1;
    V *table = mem, *n = mem + (size_t)TABLE * L, *rr = n + L, *one = rr + L, *x = one + L,
      *acc = x + L, *y = acc + L, *t = y + L;
    for (int lane = 0; lane < LANES; lane++) {
        load_lane((uint64_t *)n, lane, job->mod, job->width, L);
        load_lane((uint64_t *)rr, lane, job->rr, job->width, L);
    }
    memset(one, 0, vec);
    for (int lane = 0; lane < LANES; lane++)
        ((uint64_t *)one)[lane] = 1;
    const V k0 = _mm512_set1_epi64((long long)job->k0);
    const Py_ssize_t windows = (job->exp_len * 8 + WINDOW - 1) / WINDOW;

    for (Py_ssize_t first = 0; first < job->count; first += LANES) {
        for (int lane = 0; lane < LANES; lane++) {
            const Py_ssize_t i = first + lane;
            if (i < job->count)
                load_lane((uint64_t *)x, lane, job->bases + i * job->width, job->width, L);
            else { /* a spare lane computes 1^e */
                for (int j = 0; j < L; j++)
                    ((uint64_t *)x)[(size_t)j * LANES + lane] = j == 0;
            }
        }
        /* table[k] = x^k in Montgomery form */
        amm(table, rr, one, n, k0, L, t);         /* R mod N */
        amm(table + L, x, rr, n, k0, L, t);       /* x·R mod N */
        for (int k = 2; k < TABLE; k++)
            amm(table + (size_t)k * L, table + (size_t)(k - 1) * L, table + L, n, k0, L, t);
        select_entry(acc, table, window_at(job->exp, job->exp_len, (windows - 1) * WINDOW), L);
        for (Py_ssize_t w = windows - 2; w >= 0; w--) {
            for (int s = 0; s < WINDOW; s++)
                amm(acc, acc, acc, n, k0, L, t);
            select_entry(y, table, window_at(job->exp, job->exp_len, w * WINDOW), L);
            amm(acc, acc, y, n, k0, L, t);
        }
        /* out of Montgomery form: acc·1·R⁻¹ ≤ N, and = N only for a result ≡ 0, which a unit
         * never has; a base ≡ 0 gives 0 here */
        amm(acc, acc, one, n, k0, L, t);
        for (int lane = 0; lane < LANES; lane++) {
            const Py_ssize_t i = first + lane;
            if (i < job->count)
                store_lane(job->out + i * job->width, (const uint64_t *)acc, lane, job->width, L);
        }
    }
    /* what the bases and the exponent left in memory */
    volatile unsigned char *wipe = (volatile unsigned char *)mem;
    for (size_t i = 0; i < vec * (TABLE + 7); i++)
        wipe[i] = 0;
    free(mem);
    return 0;
}

typedef struct {
    const unsigned char *bases, *exps, *mod, *rr;
    unsigned char *out;
    Py_ssize_t count, exp_len, width;
    uint64_t k0;
    int L;
} MultiJob;

/* ∏ bases[i]^exps[i] mod N for PUBLIC operands (the proof checks' random linear combinations):
 * Pippenger's bucket method with 8-bit digits. Lane l takes the l-th eighth of the bases and
 * keeps its own 256 buckets; at each step every lane multiplies its next base into the bucket
 * its digit names, read and written back with gather/scatter (digit 0 lands in bucket 0, which
 * is never read). The memory addresses follow the exponents' digits, so this is for public
 * exponents only; the arithmetic is the same almost-Montgomery multiplication. Writes eight
 * partial products (one per lane, each below N) to out; returns 0, or -1 when out of memory. */
IFMA static int run_multi(const MultiJob *job)
{
    const int L = job->L;
    const Py_ssize_t per_lane = (job->count + LANES - 1) / LANES, k = job->exp_len;
    const size_t vec = (size_t)L * sizeof(V);
    V *buckets = aligned_alloc(64, vec * 256);
    V *xs = aligned_alloc(64, vec * (size_t)(per_lane > 0 ? per_lane : 1));
    V *mem = aligned_alloc(64, vec * 9);
    if (buckets == NULL || xs == NULL || mem == NULL) {
        free(buckets);
        free(xs);
        free(mem);
        return -1;
    }
    V *n = mem, *rr = n + L, *one = rr + L, *one_r = one + L, *running = one_r + L,
      *total = running + L, *acc = total + L, *g = acc + L, *t = g + L;
    for (int lane = 0; lane < LANES; lane++) {
        load_lane((uint64_t *)n, lane, job->mod, job->width, L);
        load_lane((uint64_t *)rr, lane, job->rr, job->width, L);
    }
    memset(one, 0, vec);
    for (int lane = 0; lane < LANES; lane++)
        ((uint64_t *)one)[lane] = 1;
    const V k0 = _mm512_set1_epi64((long long)job->k0);
    amm(one_r, rr, one, n, k0, L, t); /* R mod N: one in Montgomery form */

    /* every base into Montgomery form once, lane l holding bases l·per_lane .. */
    for (Py_ssize_t s = 0; s < per_lane; s++) {
        for (int lane = 0; lane < LANES; lane++) {
            const Py_ssize_t i = (Py_ssize_t)lane * per_lane + s;
            if (i < job->count)
                load_lane((uint64_t *)g, lane, job->bases + i * job->width, job->width, L);
            else
                for (int j = 0; j < L; j++)
                    ((uint64_t *)g)[(size_t)j * LANES + lane] = 0;
        }
        amm(xs + (size_t)s * L, g, rr, n, k0, L, t);
    }

    long long *cells = (long long *)buckets;
    const V stride = _mm512_set1_epi64(LANES);
    for (Py_ssize_t pos = 0; pos < k; pos++) {
        for (int d = 0; d < 256; d++)
            memcpy(buckets + (size_t)d * L, one_r, vec);
        for (Py_ssize_t s = 0; s < per_lane; s++) {
            long long idx[LANES];
            for (int lane = 0; lane < LANES; lane++) {
                const Py_ssize_t i = (Py_ssize_t)lane * per_lane + s;
                const long long d = i < job->count ? job->exps[i * k + pos] : 0;
                idx[lane] = (d * L) * LANES + lane;
            }
            V where = _mm512_loadu_si512(idx);
            for (int j = 0; j < L; j++) {
                g[j] = _mm512_i64gather_epi64(where, cells, 8);
                where = _mm512_add_epi64(where, stride);
            }
            amm(g, g, xs + (size_t)s * L, n, k0, L, t);
            where = _mm512_loadu_si512(idx);
            for (int j = 0; j < L; j++) {
                _mm512_i64scatter_epi64(cells, where, g[j], 8);
                where = _mm512_add_epi64(where, stride);
            }
        }
        /* Σ d·bucket[d] as products: running = ∏_{e ≥ d} bucket[e], total = ∏ running */
        memcpy(running, one_r, vec);
        memcpy(total, one_r, vec);
        for (int d = 255; d >= 1; d--) {
            amm(running, running, buckets + (size_t)d * L, n, k0, L, t);
            amm(total, total, running, n, k0, L, t);
        }
        if (pos == 0) {
            memcpy(acc, total, vec);
        } else {
            for (int b = 0; b < 8; b++)
                amm(acc, acc, acc, n, k0, L, t);
            amm(acc, acc, total, n, k0, L, t);
        }
    }
    if (k == 0)
        memcpy(acc, one_r, vec);
    amm(acc, acc, one, n, k0, L, t); /* out of Montgomery form: ≤ N */
    for (int lane = 0; lane < LANES; lane++)
        store_lane(job->out + lane * job->width, (const uint64_t *)acc, lane, job->width, L);
    free(buckets);
    free(xs);
    free(mem);
    return 0;
}
#else
#define HAVE_IFMA_CODE 0
#endif

static Py_ssize_t bit_length(const unsigned char *be, Py_ssize_t w)
{
    for (Py_ssize_t i = 0; i < w; i++)
        if (be[i])
            for (int b = 7; b >= 0; b--)
                if ((be[i] >> b) & 1)
                    return (w - 1 - i) * 8 + b + 1;
    return 0;
}

static PyObject *mb_available(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
#if HAVE_IFMA_CODE
    if (cpu_has_ifma())
        Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

static PyObject *mb_powmod(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer bases, exp, mod, rr;
    Py_ssize_t count;
    unsigned long long k0;
    int limbs;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*Ki", &bases, &count, &exp, &mod, &rr, &k0, &limbs))
        return NULL;
    PyObject *result = NULL;
#if HAVE_IFMA_CODE
    const Py_ssize_t width = mod.len;
    if (!cpu_has_ifma()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU does not run AVX-512 IFMA");
    } else if (width < 1 || limbs < 2 || limbs > MAX_LIMBS ||
               (Py_ssize_t)limbs * 52 < bit_length(mod.buf, width) + 2) {
        PyErr_SetString(PyExc_ValueError, "limbs: need 2 <= limbs <= 160 and 52*limbs >= bits + 2");
    } else if (count < 0 || bases.len != count * width || rr.len != width || exp.len < 1) {
        PyErr_SetString(PyExc_ValueError, "bases, rr or exponent have the wrong length");
    } else if ((((const unsigned char *)mod.buf)[width - 1] & 1) == 0) {
        PyErr_SetString(PyExc_ValueError, "the modulus must be odd");
    } else if (k0 > MASK52) {
        PyErr_SetString(PyExc_ValueError, "k0 must be below 2^52");
    } else {
        result = PyBytes_FromStringAndSize(NULL, count * width);
        if (result != NULL && count > 0) {
            Job job = {bases.buf, exp.buf, mod.buf, rr.buf,
                       (unsigned char *)PyBytes_AS_STRING(result),
                       count, exp.len, width, (uint64_t)k0, limbs};
            int rc;
            Py_BEGIN_ALLOW_THREADS
            rc = run(&job);
            Py_END_ALLOW_THREADS
            if (rc != 0) {
                Py_CLEAR(result);
                PyErr_NoMemory();
            }
        }
    }
#else
    (void)count;
    (void)k0;
    (void)limbs;
    PyErr_SetString(PyExc_RuntimeError, "built without AVX-512 IFMA code");
#endif
    PyBuffer_Release(&bases);
    PyBuffer_Release(&exp);
    PyBuffer_Release(&mod);
    PyBuffer_Release(&rr);
    return result;
}

static PyObject *mb_multiexp(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer bases, exps, mod, rr;
    Py_ssize_t count;
    unsigned long long k0;
    int limbs;
    if (!PyArg_ParseTuple(args, "y*ny*y*y*Ki", &bases, &count, &exps, &mod, &rr, &k0, &limbs))
        return NULL;
    PyObject *result = NULL;
#if HAVE_IFMA_CODE
    const Py_ssize_t width = mod.len;
    if (!cpu_has_ifma()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU does not run AVX-512 IFMA");
    } else if (width < 1 || limbs < 2 || limbs > MAX_LIMBS ||
               (Py_ssize_t)limbs * 52 < bit_length(mod.buf, width) + 2) {
        PyErr_SetString(PyExc_ValueError, "limbs: need 2 <= limbs <= 160 and 52*limbs >= bits + 2");
    } else if (count < 1 || bases.len != count * width || rr.len != width ||
               exps.len % count != 0) {
        PyErr_SetString(PyExc_ValueError, "bases, exponents or rr have the wrong length");
    } else if ((((const unsigned char *)mod.buf)[width - 1] & 1) == 0) {
        PyErr_SetString(PyExc_ValueError, "the modulus must be odd");
    } else if (k0 > MASK52) {
        PyErr_SetString(PyExc_ValueError, "k0 must be below 2^52");
    } else {
        result = PyBytes_FromStringAndSize(NULL, LANES * width);
        if (result != NULL) {
            MultiJob job = {bases.buf, exps.buf, mod.buf, rr.buf,
                            (unsigned char *)PyBytes_AS_STRING(result),
                            count, exps.len / count, width, (uint64_t)k0, limbs};
            int rc;
            Py_BEGIN_ALLOW_THREADS
            rc = run_multi(&job);
            Py_END_ALLOW_THREADS
            if (rc != 0) {
                Py_CLEAR(result);
                PyErr_NoMemory();
            }
        }
    }
#else
    (void)count;
    (void)k0;
    (void)limbs;
    PyErr_SetString(PyExc_RuntimeError, "built without AVX-512 IFMA code");
#endif
    PyBuffer_Release(&bases);
    PyBuffer_Release(&exps);
    PyBuffer_Release(&mod);
    PyBuffer_Release(&rr);
    return result;
}

static PyMethodDef methods[] = {
    {"available", mb_available, METH_NOARGS, "Whether this CPU and OS run AVX-512 IFMA."},
    {"powmod", mb_powmod, METH_VARARGS,
     "powmod(bases, count, exponent, modulus, rr, k0, limbs) -> bytes (see the module source)."},
    {"multiexp", mb_multiexp, METH_VARARGS,
     "multiexp(bases, count, exponents, modulus, rr, k0, limbs) -> bytes (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mbexp",
    "Multi-buffer modular exponentiation with AVX-512 IFMA (fedlora.crypto's IfmaBackend).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__mbexp(void) { return PyModule_Create(&module); }
