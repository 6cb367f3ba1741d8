/*
 * Tests for common/dtype: f16 and bf16 conversions against independent references
 * (an ldexp decoder, the compiler's _Float16 conversions, rounding decided in double),
 * and q8_0 / q4_0 against a transcription of ggml's reference quantizers plus error bounds.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/err.h"
#include "tests/check.h"

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* splitmix64: a small seeded generator for test inputs. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(uint64_t *s, float lo, float hi)
{
    return lo + (hi - lo) * (float)((rng_next(s) >> 40) * 0x1p-24);
}

/* The f16 decoder from the IEEE 754 definition, in double arithmetic. */
static double ref_f16_decode(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0)
        v = ldexp(m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp(1024 + m, e - 25);
    return sign ? -v : v;
}

static void test_f16_to_f32_exhaustive(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float got = dt_f16_to_f32((uint16_t)h);
        double want = ref_f16_decode((uint16_t)h);
        if (isnan(want)) {
            if (!isnan(got))
                bad++;
            continue;
        }
        /* compare exactly, including the sign of zero */
        if (bits(got) != bits((float)want))
            bad++;
    }
    CHECK_INT(bad, ==, 0);
    CHECK_INT(bits(dt_f16_to_f32(0x8000)), ==, 0x80000000u);
    CHECK_NEAR(dt_f16_to_f32(0x3c00), 1.0, 0);
    CHECK_NEAR(dt_f16_to_f32(0x7bff), 65504.0, 0);
    CHECK_NEAR(dt_f16_to_f32(0x0001), ldexp(1, -24), 0);
}

/* Every finite f16 survives f16 -> f32 -> f16. */
static void test_f16_round_trip(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff))
            continue; /* nan: checked separately */
        if (dt_f32_to_f16(dt_f16_to_f32((uint16_t)h)) != h)
            bad++;
    }
    CHECK_INT(bad, ==, 0);
}

/* Midpoints between neighbouring f16 values round to the even one; a hair above or below
 * goes to the nearer one. Covers subnormals, the normal range and the overflow edge. */
static void test_f16_rounding_ties(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 0x7c00; h++) {
        double a = ref_f16_decode((uint16_t)h);
        double b = h + 1 < 0x7c00 ? ref_f16_decode((uint16_t)(h + 1)) : 65536.0;
        float mid = (float)((a + b) / 2); /* exact: f16 has 11 significant bits */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        if (dt_f32_to_f16(mid) != even || dt_f32_to_f16(-mid) != (even | 0x8000))
            bad++;
        if (dt_f32_to_f16(nextafterf(mid, INFINITY)) != h + 1)
            bad++;
        if (dt_f32_to_f16(nextafterf(mid, 0)) != h)
            bad++;
    }
    CHECK_INT(bad, ==, 0);
    CHECK_INT(dt_f32_to_f16(65520.0f), ==, 0x7c00); /* the tie above 65504 goes to inf */
    CHECK_INT(dt_f32_to_f16(65519.0f), ==, 0x7bff);
    CHECK_INT(dt_f32_to_f16(1e10f), ==, 0x7c00);
    CHECK_INT(dt_f32_to_f16(-1e10f), ==, 0xfc00);
    CHECK_INT(dt_f32_to_f16(INFINITY), ==, 0x7c00);
    CHECK_INT(dt_f32_to_f16(-INFINITY), ==, 0xfc00);
    CHECK_INT(dt_f32_to_f16(-0.0f), ==, 0x8000);
    CHECK_INT(dt_f32_to_f16(1e-30f), ==, 0);
    CHECK_INT(dt_f32_to_f16(from_bits(1)), ==, 0);           /* f32 subnormal */
    CHECK_INT(dt_f32_to_f16((float)ldexp(1, -25)), ==, 0);   /* tie to even (0) */
    CHECK_INT(dt_f32_to_f16((float)ldexp(1.5, -25)), ==, 1); /* above the tie */
}

static void test_f16_nan(void)
{
    uint16_t h = dt_f32_to_f16(NAN);
    CHECK((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
    /* a nan whose payload sits only in the low f32 bits must not become inf */
    h = dt_f32_to_f16(from_bits(0x7f800001));
    CHECK((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
    h = dt_f32_to_f16(from_bits(0xff800001));
    CHECK((h & 0xfc00) == 0xfc00 && (h & 0x3ff) != 0);
    CHECK(isnan(dt_f16_to_f32(0x7e00)));
    CHECK(isnan(dt_f16_to_f32(0x7c01)));
}

#ifdef __FLT16_MAX__
/* The compiler's own conversion (libgcc, correctly rounded) on random and edge inputs. */
static void test_f16_vs_compiler(void)
{
    uint64_t s = 42;
    int bad = 0;
    for (int i = 0; i < 2000000; i++) {
        float f;
        if (i & 1)
            f = from_bits((uint32_t)rng_next(&s)); /* any bit pattern */
        else
            f = ldexpf(rng_uniform(&s, -2, 2), (int)(rng_next(&s) % 44) - 30); /* f16 range */
        if (isnan(f))
            continue;
        _Float16 r = (_Float16)f;
        uint16_t want;
        memcpy(&want, &r, 2);
        if (dt_f32_to_f16(f) != want)
            bad++;
    }
    CHECK_INT(bad, ==, 0);
}
#else
static void test_f16_vs_compiler(void)
{
    check_skip("the compiler has no _Float16");
}
#endif

/* bf16 reference: choose between the two neighbouring bf16 values by distance in double,
 * ties to the even one. */
static uint16_t ref_f32_to_bf16(float f)
{
    uint32_t u = bits(f);
    uint16_t lo = (uint16_t)(u >> 16);
    if ((u & 0xffff) == 0)
        return lo;
    uint16_t hi = (uint16_t)(lo + 1); /* next away from zero (same sign) */
    double dl = fabs((double)f - (double)from_bits((uint32_t)lo << 16));
    double dh = fabs((double)from_bits((uint32_t)hi << 16) - (double)f);
    if (isinf(from_bits((uint32_t)hi << 16)))
        dh = fabs(ldexp(1, 128) - fabs((double)f)); /* rounding up overflows to inf */
    if (dl < dh)
        return lo;
    if (dh < dl)
        return hi;
    return (lo & 1) ? hi : lo;
}

static void test_bf16(void)
{
    uint64_t s = 7;
    int bad = 0;
    for (int i = 0; i < 2000000; i++) {
        float f = from_bits((uint32_t)rng_next(&s));
        if (isnan(f) || isinf(f))
            continue;
        if (dt_f32_to_bf16(f) != ref_f32_to_bf16(f))
            bad++;
    }
    CHECK_INT(bad, ==, 0);
    /* every bf16 value converts to f32 by a shift and back unchanged */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = dt_bf16_to_f32((uint16_t)h);
        if (bits(f) != h << 16)
            bad++;
        if (!isnan(f) && dt_f32_to_bf16(f) != h)
            bad++;
    }
    CHECK_INT(bad, ==, 0);
    CHECK_INT(dt_f32_to_bf16(1.0f), ==, 0x3f80);
    CHECK_INT(dt_f32_to_bf16(from_bits(0x3f808000)), ==, 0x3f80); /* tie, even stays */
    CHECK_INT(dt_f32_to_bf16(from_bits(0x3f818000)), ==, 0x3f82); /* tie, odd rounds up */
    CHECK_INT(dt_f32_to_bf16(from_bits(0x3f808001)), ==, 0x3f81);
    CHECK_INT(dt_f32_to_bf16(INFINITY), ==, 0x7f80);
    uint16_t n = dt_f32_to_bf16(from_bits(0x7f800001)); /* nan with a low payload only */
    CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f) != 0);
    CHECK(isnan(dt_bf16_to_f32(n)));
}

/* ggml's quantize_row_q8_0_ref, transcribed. */
static void ggml_q8_0(const float *x, block_q8_0 *y, int k)
{
    for (int i = 0; i < k / 32; i++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x[i * 32 + j]));
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = dt_f32_to_f16(d);
        for (int j = 0; j < 32; j++)
            y[i].qs[j] = (int8_t)roundf(x[i * 32 + j] * id);
    }
}

/* ggml's quantize_row_q4_0_ref, transcribed. */
static void ggml_q4_0(const float *x, block_q4_0 *y, int k)
{
    for (int i = 0; i < k / 32; i++) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float v = x[i * 32 + j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max = v;
            }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = dt_f32_to_f16(d);
        for (int j = 0; j < 16; ++j) {
            const float x0 = x[i * 32 + 0 + j] * id;
            const float x1 = x[i * 32 + 16 + j] * id;
            const int a = (int8_t)(x0 + 8.5f), b = (int8_t)(x1 + 8.5f);
            const uint8_t xi0 = (uint8_t)(a < 15 ? a : 15);
            const uint8_t xi1 = (uint8_t)(b < 15 ? b : 15);
            y[i].qs[j] = xi0;
            y[i].qs[j] |= (uint8_t)(xi1 << 4);
        }
    }
}

#define NQ 4096

static void fill_inputs(float *x, uint64_t seed)
{
    uint64_t s = seed;
    for (int i = 0; i < NQ; i++)
        x[i] = rng_uniform(&s, -3, 3);
    for (int j = 0; j < 32; j++) /* an all-zero block, and one with a single value */
        x[j] = 0.0f;
    for (int j = 32; j < 64; j++)
        x[j] = j == 40 ? -2.5f : 0.0f;
    for (int j = 64; j < 96; j++) /* exact halves, where rounding direction shows */
        x[j] = (float)(j - 80) * 0.5f;
}

static void test_q8_0(void)
{
    static float x[NQ], y[NQ];
    static block_q8_0 got[NQ / 32], want[NQ / 32];
    fill_inputs(x, 1);
    dt_quantize_q8_0(x, got, NQ);
    ggml_q8_0(x, want, NQ);
    CHECK(memcmp(got, want, sizeof got) == 0);
    CHECK_OK(dt_to_f32(DT_Q8_0, got, y, NQ));
    int bad = 0;
    for (int b = 0; b < NQ / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = dt_f16_to_f32(got[b].d);
        for (int j = 0; j < 32; j++) {
            /* value = d * q, and q is x / d rounded (d itself rounded to f16) */
            if (y[b * 32 + j] != d * (float)got[b].qs[j])
                bad++;
            if (fabsf(y[b * 32 + j] - x[b * 32 + j]) > 0.5f * d + amax * 1e-3f)
                bad++;
        }
    }
    CHECK_INT(bad, ==, 0);
    /* block 0 is zeros: d = 0 and every q = 0; block 1 has its max at -127 */
    CHECK_INT(got[0].d, ==, 0);
    CHECK_INT(got[1].qs[8], ==, -127);
    CHECK_INT(got[1].qs[0], ==, 0);
    CHECK_NEAR(y[40], -2.5, 2.5 * 1e-3);
}

static void test_q4_0(void)
{
    static float x[NQ], y[NQ];
    static block_q4_0 got[NQ / 32], want[NQ / 32];
    fill_inputs(x, 2);
    dt_quantize_q4_0(x, got, NQ);
    ggml_q4_0(x, want, NQ);
    CHECK(memcmp(got, want, sizeof got) == 0);
    CHECK_OK(dt_to_f32(DT_Q4_0, got, y, NQ));
    int bad = 0;
    for (int b = 0; b < NQ / 32; b++) {
        float d = dt_f16_to_f32(got[b].d);
        for (int j = 0; j < 32; j++) {
            /* element j is in the low nibble of byte j, element j+16 in the high nibble */
            int q = j < 16 ? (got[b].qs[j] & 15) : (got[b].qs[j - 16] >> 4);
            if (y[b * 32 + j] != (float)(q - 8) * d)
                bad++;
            /* within one step (the clamp at 15 costs a full step at the far end) */
            if (fabsf(y[b * 32 + j] - x[b * 32 + j]) > fabsf(d) * 1.01f)
                bad++;
        }
    }
    CHECK_INT(bad, ==, 0);
    /* block 1: the max-magnitude element (-2.5) maps to q = 0, i.e. -8 * d = -2.5 */
    CHECK_INT(got[1].qs[8] & 15, ==, 0);
    CHECK_NEAR(y[40], -2.5, 2.5 * 1e-3);
    CHECK_INT(got[0].d & 0x7fff, ==, 0); /* ggml's 0 / -8 is -0 */
}

/* A row to f16 (dt_from_f32, the hardware's conversion where there is one) gives the bits
 * dt_f32_to_f16 gives for each element: every f16 value, the midpoints between neighbours
 * and a hair to either side (ties to even), then random bit patterns of every exponent (NaN,
 * inf, overflow, subnormals, underflow to zero), in rows of every length modulo 8. */
static void test_f16_row_matches_scalar(void)
{
    enum { N = 4 * 0x8000 + 40000 };
    float *x = malloc(sizeof(float) * N);
    uint16_t *got = malloc(sizeof(uint16_t) * N);
    if (!x || !got) {
        check_fail_(__FILE__, __LINE__, "out of memory");
        free(x);
        free(got);
        return;
    }
    size_t n = 0;
    for (uint32_t h = 0; h < 0x8000; h++) {
        const float a = dt_f16_to_f32((uint16_t)h), b = dt_f16_to_f32((uint16_t)(h + 1));
        const float mid = h + 1 < 0x7c00 ? (float)(((double)a + b) / 2) : a;
        x[n++] = (h & 1) ? -a : a;
        x[n++] = mid;
        x[n++] = nextafterf(mid, INFINITY);
        x[n++] = -nextafterf(mid, -INFINITY);
    }
    uint64_t s = 11;
    for (; n < N; n++) /* any bit pattern, or a value about f16's range (subnormals, rounding) */
        x[n] = n % 2 ? from_bits((uint32_t)rng_next(&s))
                     : ldexpf(rng_uniform(&s, -2, 2), (int)(rng_next(&s) % 50) - 34);
    size_t bad = 0;
    for (size_t len = 1; len <= 9; len++) { /* the tail after whole eights, and none */
        memset(got, 0xff, sizeof(uint16_t) * N);
        const size_t m = N - (N % 8) - 16 + len;
        CHECK_OK(dt_from_f32(DT_F16, x, got, m));
        for (size_t i = 0; i < m; i++)
            if (got[i] != dt_f32_to_f16(x[i]) && bad++ < 5)
                check_fail_(__FILE__, __LINE__,
                            "length %zu, element %zu (%a, bits %08x): %04x "
                            "vs %04x",
                            m, i, (double)x[i], (unsigned)bits(x[i]), got[i], dt_f32_to_f16(x[i]));
        CHECK_INT(got[m], ==, 0xffff); /* nothing written past the row */
    }
    CHECK_INT(bad, ==, 0);
    free(x);
    free(got);
}

static void test_row_conversions(void)
{
    enum { N = 256 };
    static float x[N], y[N];
    static uint8_t buf[N * 4];
    uint64_t s = 3;
    for (int i = 0; i < N; i++)
        x[i] = rng_uniform(&s, -1, 1);
    const uint32_t types[] = {DT_F32, DT_F16, DT_BF16, DT_Q8_0, DT_Q4_0};
    const double tol[] = {0, 1e-3, 8e-3, 1.0 / 127, 1.0 / 8 + 1e-3};
    for (int t = 0; t < 5; t++) {
        CHECK_OK(dt_from_f32(types[t], x, buf, N));
        CHECK_OK(dt_to_f32(types[t], buf, y, N));
        double maxerr = 0;
        for (int i = 0; i < N; i++)
            maxerr = fmax(maxerr, fabs(y[i] - x[i]));
        CHECK_MSG(maxerr <= tol[t], "type %u: max error %g > %g", types[t], maxerr, tol[t]);
    }
    CHECK_INT(dt_to_f32(10 /* q2_K */, buf, y, N), ==, ERR_UNSUPPORTED);
    CHECK_INT(dt_from_f32(99, x, buf, N), ==, ERR_UNSUPPORTED);
}

int main(void)
{
    RUN(test_f16_to_f32_exhaustive);
    RUN(test_f16_round_trip);
    RUN(test_f16_rounding_ties);
    RUN(test_f16_nan);
    RUN(test_f16_vs_compiler);
    RUN(test_f16_row_matches_scalar);
    RUN(test_bf16);
    RUN(test_q8_0);
    RUN(test_q4_0);
    RUN(test_row_conversions);
    return check_done();
}
