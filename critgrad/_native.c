/* The memory's work on the CPU, for float32 gradients, sums and stores, per parameter group:
 * critgrad_plan (admission and coefficients), then either critgrad_adam / critgrad_sgd (the
 * directions, the base's update and the slot writes in one pass over the tensors) or
 * critgrad_directions (one pass), the base's own step and critgrad_finish (one pass); the same
 * work as torch operations takes ~14 passes (torch.where, index_select, index_put_ and addcmul_
 * are passes of their own, each direction a fresh buffer) and a hundred small operations.
 *
 * The arithmetic is torch's, operation for operation, each product and sum rounded to float32
 * where torch's CPU kernels round (fmaf where they fuse a multiply-add; the build passes
 * -ffp-contract=off, so nothing else is fused), so the memory's values equal the torch path's
 * bit for bit. Three exceptions, where torch's reduction order is its own: the gradients' norms
 * (their float32 squares summed here in float64 in a fixed order, whatever the threads, then
 * rounded to float32 as torch's are, with torch's float32 range), the resync's sum over the C
 * stored rows (taken in row order), and Adam's square root (correctly rounded here; torch's
 * vectorized one is not, always).
 *
 * Built and loaded by critgrad/_native.py (plain C, no torch or Python headers: it takes data
 * pointers, so one build serves every torch version), with OpenMP where the compiler has it.
 */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Parallel work is split in spans of the group's elements taken as one concatenated range. */
#define MIN_PER_THREAD (1 << 16)
/* A gradient's sum of squares is summed per chunk of this many elements, then over the chunks
 * in order: the same value whatever the number of threads. */
#define NORM_CHUNK (1 << 16)

/* The loops, written once and compiled once per instruction set below (always inlined into a
 * function of each target): fmaf is one instruction where the CPU has FMA, and the same value,
 * computed in software, where it has not, so every variant gives the same bits. */
#define INLINE static inline __attribute__((always_inline))

INLINE double sum_of_squares_body(const float *restrict g, int64_t n) {
    /* Sixteen running sums, lane j % 16 taking element j, in an order that is fixed, so every
     * CPU gives the same bits. Each square is a float32 product, as torch's float32 norms take
     * it (squares below float32's range vanish, above it are infinite, as there); the sums are
     * float64. */
    double lane[16] = {0.0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) {
            float x = g[j + k];
            lane[k] += (double)(x * x);
        }
    for (int k = 0; j < n; j++, k++) {
        float x = g[j];
        lane[k] += (double)(x * x);
    }
    for (int width = 8; width >= 1; width /= 2)
        for (int k = 0; k < width; k++) lane[k] += lane[k + width];
    return lane[0];
}

INLINE void direction_body(const float *restrict g, const float *restrict t, float *restrict d,
                           int64_t n, float b) {
    /* torch.addcmul(g, t, b): g + t * b, one rounding */
    for (int64_t j = 0; j < n; j++) d[j] = fmaf(t[j], b, g[j]);
}

INLINE void direction_scaled_body(const float *restrict g, const float *restrict t,
                                  float *restrict d, int64_t n, float b, float s) {
    /* torch.mul(t, b).addcmul_(g, s): (t * b) + g * s, the last two with one rounding */
    for (int64_t j = 0; j < n; j++) d[j] = fmaf(g[j], s, t[j] * b);
}

INLINE void write_body(float *restrict row, float *restrict t, const float *restrict g, int64_t n,
                       float scale) {
    /* The admitted gradient replaces the entry; the scaled sum loses the old entry, then gains
     * the new one (torch: t.addcmul_(old, scale, value=-1).addcmul_(g, scale); the products by
     * a power of two are exact). */
    for (int64_t j = 0; j < n; j++) {
        float old = row[j];
        float gj = g[j];
        t[j] = (t[j] - old * scale) + gj * scale;
        row[j] = gj;
    }
}

INLINE void resync_body(const float *restrict store, float *restrict t, int64_t numel,
                        int64_t capacity, int64_t start, int64_t n, float scale) {
    /* t[start:start+n] = sum over rows r = 0..C-1 of store[r, start:start+n] * scale */
    for (int64_t j = 0; j < n; j++) t[start + j] = store[start + j] * scale;
    for (int64_t r = 1; r < capacity; r++) {
        const float *row = store + r * numel + start;
        for (int64_t j = 0; j < n; j++) t[start + j] += row[j] * scale;
    }
}

/* Adam's update (torch.optim.Adam's for-loop step, operation for operation, each rounded to
 * float32) on the direction, fused with the memory's slot write: one pass over g, the sum, the
 * evicted entry, the parameter and its moments. */
typedef struct {
    float w1;        /* 1 - beta1 (lerp's weight) */
    float beta2, one_minus_beta2, eps, weight_decay, decay_factor; /* 1 - lr * weight_decay */
    int decoupled, maximize;
} AdamOptions;

INLINE void adam_loop(const float *restrict g, float *restrict t, float *restrict row,
                      float *restrict p, float *restrict m, float *restrict v,
                      float *restrict vmax, int64_t n, const AdamOptions *o, float b, float s,
                      const int scaled, float neg_step_size, float bc2_sqrt, const int l2,
                      const int amsgrad, const int admitted, const int momenta, float scale) {
    /* (the const int arguments are constants where this is inlined: one loop per case) */
    const float sign = o->maximize ? -1.0f : 1.0f;
    /* decoupled weight decay multiplies the parameter (by exactly 1 where there is none) */
    const float factor = o->decoupled && o->weight_decay != 0.0f ? o->decay_factor : 1.0f;
    const float w1 = o->w1, beta2 = o->beta2, c2 = o->one_minus_beta2;
    const int low = w1 < 0.5f; /* torch's lerp: fma(w, d - m, m), or fma(w - 1, d - m, d) */
    for (int64_t j = 0; j < n; j++) {
        float gj = g[j];
        /* Adam's moments take the direction; Adam_CM's momentum takes the gradient */
        float d = (momenta ? gj : scaled ? fmaf(gj, s, t[j] * b) : fmaf(t[j], b, gj)) * sign;
        float pj = p[j] * factor;
        if (l2) d = fmaf(pj, o->weight_decay, d);
        float mj = m[j];
        float from_m = fmaf(w1, d - mj, mj), from_d = fmaf(w1 - 1.0f, d - mj, d);
        mj = low ? from_m : from_d;
        /* Adam_CM: the aggregate m + b * T (torch.addcmul(m, T, b)) drives v and the step */
        float x = momenta ? fmaf(t[j], b, mj) : d;
        float vj = fmaf(c2 * x, x, v[j] * beta2); /* torch's addcmul_(x, x, value=c2) */
        float second = vj;
        if (amsgrad) {
            float largest = vmax[j];
            second = largest > vj ? largest : vj;
            vmax[j] = second;
        }
        /* torch's addcdiv_(m, denominator, value): p + (value * m) / denominator */
        p[j] = pj + (neg_step_size * (momenta ? x : mj)) / (sqrtf(second) / bc2_sqrt + o->eps);
        m[j] = mj;
        v[j] = vj;
        if (admitted) { /* the memory takes the gradient (Adam) or the momentum (Adam_CM) */
            float entry = momenta ? mj : gj;
            float old = row[j];
            t[j] = (t[j] - old * scale) + entry * scale;
            row[j] = entry;
        }
    }
}

INLINE void adam_body(const float *restrict g, float *restrict t, float *restrict row,
                      float *restrict p, float *restrict m, float *restrict v,
                      float *restrict vmax, int64_t n, const AdamOptions *o, float b, float s,
                      int scaled, float neg_step_size, float bc2_sqrt, int admitted, int momenta,
                      float scale) {
    int l2 = !o->decoupled && o->weight_decay != 0.0f;
#define ADAM_CASE(SCALED, L2, AMSGRAD, ADMITTED, MOMENTA)                                        \
    if (scaled == SCALED && l2 == L2 && (vmax != NULL) == AMSGRAD &&                             \
        (admitted != 0) == ADMITTED && (momenta != 0) == MOMENTA)                                \
        return adam_loop(g, t, row, p, m, v, vmax, n, o, b, s, SCALED, neg_step_size, bc2_sqrt, \
                         L2, AMSGRAD, ADMITTED, MOMENTA, scale);
#define ADAM_CASES(SCALED, L2, MOMENTA)                                                        \
    ADAM_CASE(SCALED, L2, 0, 0, MOMENTA) ADAM_CASE(SCALED, L2, 0, 1, MOMENTA)                 \
    ADAM_CASE(SCALED, L2, 1, 0, MOMENTA) ADAM_CASE(SCALED, L2, 1, 1, MOMENTA)
    ADAM_CASES(0, 0, 0) ADAM_CASES(0, 1, 0) ADAM_CASES(1, 0, 0) ADAM_CASES(1, 1, 0)
    ADAM_CASES(0, 0, 1) /* Adam_CM: weight decay decoupled, the aggregate a plain sum (s = 1) */
#undef ADAM_CASES
#undef ADAM_CASE
}

/* SGD's update (torch.optim.SGD's for-loop step, operation for operation) on the direction,
 * fused with the memory's slot write. */
typedef struct {
    float neg_lr, weight_decay, momentum, one_minus_dampening;
    int nesterov, maximize;
} SGDOptions;

INLINE void sgd_loop(const float *restrict g, float *restrict t, float *restrict row,
                     float *restrict p, float *restrict buf, int64_t n, const SGDOptions *o,
                     float b, float s, const int scaled, const int with_momentum,
                     const int admitted, float scale) {
    const float sign = o->maximize ? -1.0f : 1.0f;
    const float wd = o->weight_decay, mu = o->momentum, damp = o->one_minus_dampening;
    const int nesterov = o->nesterov;
    for (int64_t j = 0; j < n; j++) {
        float gj = g[j];
        float d = (scaled ? fmaf(gj, s, t[j] * b) : fmaf(t[j], b, gj)) * sign;
        float pj = p[j];
        d = wd != 0.0f ? fmaf(pj, wd, d) : d; /* torch: grad.add(param, alpha=wd) */
        if (with_momentum) {
            float bj = fmaf(d, damp, buf[j] * mu); /* buf.mul_(mu).add_(d, alpha=1 - damp) */
            buf[j] = bj;
            d = nesterov ? fmaf(bj, mu, d) : bj;
        }
        p[j] = fmaf(d, o->neg_lr, pj); /* param.add_(d, alpha=-lr) */
        if (admitted) {
            float old = row[j];
            t[j] = (t[j] - old * scale) + gj * scale;
            row[j] = gj;
        }
    }
}

INLINE void sgd_body(const float *restrict g, float *restrict t, float *restrict row,
                     float *restrict p, float *restrict buf, int64_t n, const SGDOptions *o,
                     float b, float s, int scaled, int admitted, float scale) {
#define SGD_CASE(SCALED, MOMENTUM, ADMITTED)                                                     \
    if (scaled == SCALED && (buf != NULL) == MOMENTUM && (admitted != 0) == ADMITTED)           \
        return sgd_loop(g, t, row, p, buf, n, o, b, s, SCALED, MOMENTUM, ADMITTED, scale);
    SGD_CASE(0, 0, 0) SGD_CASE(0, 0, 1) SGD_CASE(0, 1, 0) SGD_CASE(0, 1, 1)
    SGD_CASE(1, 0, 0) SGD_CASE(1, 0, 1) SGD_CASE(1, 1, 0) SGD_CASE(1, 1, 1)
#undef SGD_CASE
}

typedef struct {
    double (*sum_of_squares)(const float *, int64_t);
    void (*direction)(const float *, const float *, float *, int64_t, float);
    void (*direction_scaled)(const float *, const float *, float *, int64_t, float, float);
    void (*write)(float *, float *, const float *, int64_t, float);
    void (*resync)(const float *, float *, int64_t, int64_t, int64_t, int64_t, float);
    void (*adam)(const float *, float *, float *, float *, float *, float *, float *, int64_t,
                 const AdamOptions *, float, float, int, float, float, int, int, float);
    void (*sgd)(const float *, float *, float *, float *, float *, int64_t, const SGDOptions *,
                float, float, int, int, float);
} Kernels;

#define KERNELS(NAME, TARGET)                                                                  \
    TARGET static double sum_of_squares_##NAME(const float *g, int64_t n) {                    \
        return sum_of_squares_body(g, n);                                                      \
    }                                                                                          \
    TARGET static void direction_##NAME(const float *g, const float *t, float *d, int64_t n,   \
                                        float b) {                                             \
        direction_body(g, t, d, n, b);                                                         \
    }                                                                                          \
    TARGET static void direction_scaled_##NAME(const float *g, const float *t, float *d,       \
                                               int64_t n, float b, float s) {                  \
        direction_scaled_body(g, t, d, n, b, s);                                               \
    }                                                                                          \
    TARGET static void write_##NAME(float *row, float *t, const float *g, int64_t n,           \
                                    float scale) {                                             \
        write_body(row, t, g, n, scale);                                                       \
    }                                                                                          \
    TARGET static void resync_##NAME(const float *store, float *t, int64_t numel,              \
                                     int64_t capacity, int64_t start, int64_t n, float scale) { \
        resync_body(store, t, numel, capacity, start, n, scale);                               \
    }                                                                                          \
    TARGET static void adam_##NAME(const float *g, float *t, float *row, float *p, float *m,    \
                                   float *v, float *vmax, int64_t n, const AdamOptions *o,     \
                                   float b, float s, int scaled, float neg_step_size,          \
                                   float bc2_sqrt, int admitted, int momenta, float scale) {   \
        adam_body(g, t, row, p, m, v, vmax, n, o, b, s, scaled, neg_step_size, bc2_sqrt,       \
                  admitted, momenta, scale);                                                   \
    }                                                                                          \
    TARGET static void sgd_##NAME(const float *g, float *t, float *row, float *p, float *buf,   \
                                  int64_t n, const SGDOptions *o, float b, float s, int scaled, \
                                  int admitted, float scale) {                                 \
        sgd_body(g, t, row, p, buf, n, o, b, s, scaled, admitted, scale);                      \
    }                                                                                          \
    static const Kernels kernels_##NAME = {sum_of_squares_##NAME, direction_##NAME,            \
                                           direction_scaled_##NAME, write_##NAME,              \
                                           resync_##NAME,           adam_##NAME,               \
                                           sgd_##NAME};

KERNELS(default, )

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define X86_VARIANTS 1
KERNELS(avx2, __attribute__((target("avx2,fma"))))
KERNELS(avx512, __attribute__((target("avx512f,avx2,fma"))))
#endif

static const Kernels *kernels(void) {
#ifdef X86_VARIANTS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"))
        return &kernels_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &kernels_avx2;
#endif
    return &kernels_default;
}

typedef struct {
    int kind; /* 0: directions, 1: slot writes, 2: Adam, 3: SGD, 4: Adam_CM (with the writes) */
    int64_t n;
    float *const *g;
    float *const *t;
    float *const *d;     /* directions: outputs */
    float *const *store; /* slot writes */
    const int64_t *numel;
    const int64_t *offset; /* n + 1 prefix sums of numel */
    const float *b;
    const float *s; /* may be NULL: s = 1 */
    const int64_t *slot;
    const uint8_t *admit;
    float scale;
    int64_t lo, hi; /* this thread's span of the concatenated range */
    /* kind 2 */
    float *const *p;
    float *const *m;
    float *const *v;
    float *const *vmax; /* NULL without amsgrad */
    const AdamOptions *options;
    const float *neg_step_size;
    const float *bc2_sqrt;
    /* kind 3 (SGD and slot writes): p, and v as the momentum buffers (NULL: no momentum) */
    const SGDOptions *sgd;
} Work;

static void run_span(const Work *w) {
    const Kernels *k = kernels();
    for (int64_t i = 0; i < w->n; i++) {
        int64_t first = w->offset[i], last = w->offset[i + 1];
        if (last <= w->lo || first >= w->hi) continue;
        int64_t a = (w->lo > first ? w->lo : first) - first;
        int64_t z = (w->hi < last ? w->hi : last) - first;
        if (w->kind == 0) {
            if (w->s == NULL)
                k->direction(w->g[i] + a, w->t[i] + a, w->d[i] + a, z - a, w->b[i]);
            else
                k->direction_scaled(w->g[i] + a, w->t[i] + a, w->d[i] + a, z - a, w->b[i],
                                    w->s[i]);
        } else if (w->kind == 1) {
            if (w->admit[i]) {
                float *row = w->store[i] + w->slot[i] * w->numel[i];
                k->write(row + a, w->t[i] + a, w->g[i] + a, z - a, w->scale);
            }
        } else if (w->kind == 3) {
            float *row = w->store[i] + w->slot[i] * w->numel[i];
            k->sgd(w->g[i] + a, w->t[i] + a, row + a, w->p[i] + a,
                   w->v == NULL ? NULL : w->v[i] + a, z - a, w->sgd, w->b[i],
                   w->s == NULL ? 1.0f : w->s[i], w->s != NULL, w->admit[i], w->scale);
        } else { /* 2: Adam, 4: Adam_CM */
            float *row = w->store[i] + w->slot[i] * w->numel[i];
            k->adam(w->g[i] + a, w->t[i] + a, row + a, w->p[i] + a, w->m[i] + a, w->v[i] + a,
                    w->vmax == NULL ? NULL : w->vmax[i] + a, z - a, w->options, w->b[i],
                    w->s == NULL ? 1.0f : w->s[i], w->s != NULL, w->neg_step_size[i],
                    w->bc2_sqrt[i], w->admit[i], w->kind == 4, w->scale);
        }
    }
}

static void run_parallel(Work *work, int threads) {
    int64_t total = work->offset[work->n];
    int64_t most = total / MIN_PER_THREAD;
    if (threads > most) threads = (int)(most > 1 ? most : 1);
#ifdef _OPENMP
    /* torch's own OpenMP runtime (the process has loaded it: same library name) runs the
     * parts, so its threads are not kept spinning beside threads of ours. */
    if (threads > 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int k = 0; k < threads; k++) {
            Work part = *work;
            part.lo = total * k / threads;
            part.hi = total * (k + 1) / threads;
            run_span(&part);
        }
        return;
    }
#endif
    work->lo = 0;
    work->hi = total;
    run_span(work);
}

/* d[i] = g[i] + b[i] * t[i]  (s == NULL), or  t[i] * b[i] + g[i] * s[i], each with the rounding
 * of torch's addcmul (see the *_body functions). */
void critgrad_directions(int64_t n, float *const *g, float *const *t, float *const *d,
                         const int64_t *numel, const int64_t *offset, const float *b,
                         const float *s, int threads) {
    Work work = {.kind = 0, .n = n, .g = g, .t = t, .d = d, .numel = numel, .offset = offset,
                 .b = b, .s = s};
    run_parallel(&work, threads);
}

static void resync_one(const Kernels *k, const float *store, float *t, int64_t size,
                       int64_t capacity, int64_t period, int64_t count, float scale) {
    if (size == 0) return;
    int64_t length = (size + period - 1) / period;
    int64_t start = (count % period) * length;
    if (size < period) { /* one element: the torch path's index % numel */
        k->resync(store, t, size, capacity, start % size, 1, scale);
        return;
    }
    if (start >= size) start -= size; /* the chunk wraps around at most once */
    int64_t head = size - start < length ? size - start : length;
    k->resync(store, t, size, capacity, start, head, scale);
    if (head < length) k->resync(store, t, size, capacity, 0, length - head, scale);
}

static void write_all(int64_t n, float *const *store, float *const *t, float *const *g,
                      const int64_t *numel, const int64_t *offset, const int64_t *slot,
                      const uint8_t *admit, float scale, int threads) {
    Work work = {.kind = 1, .n = n, .g = g, .t = t, .store = store, .numel = numel,
                 .offset = offset, .slot = slot, .admit = admit, .scale = scale};
    run_parallel(&work, threads);
}

/* critgrad.memory.resync_ of one running sum, with the offers counted in *count: run after a
 * compiled step for large sums (critgrad._compile.resync_or_defer_). */
void critgrad_resync(float *store, float *t, int64_t numel, int64_t capacity,
                     int64_t resync_per_slot, const int64_t *count, float scale) {
    resync_one(kernels(), store, t, numel, capacity, resync_per_slot * capacity, *count, scale);
}

/* ------------------------------------------------------------------ the bookkeeping
 * The same decisions and updates as critgrad.memory.admission, random_slots, coefficients and
 * bookkeeping, on the per-tensor state arrays themselves (no stacking into (n, C) tables). Every
 * float operation is the one torch performs there (float64), so the results are the same bits. */

enum { CRITICAL = 0, RECENT = 1, SMALLEST = 2, RANDOM = 3 };
enum { AGGR_SUM = 0, AGGR_MID = 1, AGGR_MEAN = 2 };
enum { OFFERED, ADMITTED, REJECTED, NONFINITE, EVICTED, EVICTED_AGE_SUM };

static uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

static int is_finite(double x) { return x - x == 0.0; }

enum { SUM_OF_NORMS = 0, PER_TENSOR = 1, GLOBAL_NORM = 2 };

static int64_t chunks_of(int64_t size) { return (size + NORM_CHUNK - 1) / NORM_CHUNK; }

static double chunk_sum_of_squares(const Kernels *k, const float *g, int64_t size, int64_t c) {
    int64_t a = c * NORM_CHUNK;
    return k->sum_of_squares(g + a, size - a < NORM_CHUNK ? size - a : NORM_CHUNK);
}

/* sums[i]: the sum of the squares of g[i]'s elements, chunk by chunk; in parallel where there
 * are several chunks and threads (the chunks' sums are kept and added in order: the same bits). */
static void sums_of_squares(const Kernels *k, int64_t n, float *const *g, const int64_t *numel,
                            int threads, double *sums) {
    int64_t chunks = 0;
    for (int64_t i = 0; i < n; i++) chunks += chunks_of(numel[i]);
    double *partial = NULL;
    int64_t *first = NULL, *owner = NULL;
#ifdef _OPENMP
    if (threads > 1 && chunks > 1 && chunks * NORM_CHUNK >= 2 * MIN_PER_THREAD) {
        partial = malloc(chunks * sizeof(double));
        first = malloc((n + 1) * sizeof(int64_t));
        owner = malloc(chunks * sizeof(int64_t));
    }
    if (partial != NULL && first != NULL && owner != NULL) {
        first[0] = 0;
        for (int64_t i = 0; i < n; i++) {
            first[i + 1] = first[i] + chunks_of(numel[i]);
            for (int64_t c = first[i]; c < first[i + 1]; c++) owner[c] = i;
        }
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t c = 0; c < chunks; c++) {
            int64_t i = owner[c];
            partial[c] = chunk_sum_of_squares(k, g[i], numel[i], c - first[i]);
        }
        for (int64_t i = 0; i < n; i++) {
            double total = 0.0;
            for (int64_t c = first[i]; c < first[i + 1]; c++) total += partial[c];
            sums[i] = total;
        }
    } else
#endif
    {
        (void)threads;
        for (int64_t i = 0; i < n; i++) {
            double total = 0.0;
            for (int64_t c = 0; c < chunks_of(numel[i]); c++)
                total += chunk_sum_of_squares(k, g[i], numel[i], c);
            sums[i] = total;
        }
    }
    free(partial);
    free(first);
    free(owner);
}

/* keys[i]: critgrad.memory.keys_from_norms of the gradients' L2 norms (float32 gradients'
 * norms are float32, as torch's: the square root of the sum of squares, rounded to float32, and
 * infinite where that sum exceeds float32's range, as torch's float32 sum does; a single
 * element's norm is its absolute value, as torch's is), combined in float64 in tensor order. */
static void gradient_keys(int64_t n, float *const *g, const int64_t *numel, int mode,
                          int threads, double *keys) {
    sums_of_squares(kernels(), n, g, numel, threads, keys);
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (numel[i] == 1)
            keys[i] = fabs((double)g[i][0]);
        else
            keys[i] = keys[i] > FLT_MAX ? INFINITY : (double)(float)sqrt(keys[i]);
        total += mode == GLOBAL_NORM ? keys[i] * keys[i] : keys[i];
    }
    if (mode == GLOBAL_NORM) total = sqrt(total);
    if (mode != PER_TENSOR)
        for (int64_t i = 0; i < n; i++) keys[i] = total;
}

/* For each of n tensors: keys[i] (copied from keys_in, with its stride, or computed from the
 * gradients g if keys_in is NULL), admit[i], slot[i], filled[i] (entries before this step) and
 * the direction's coefficients b[i], s[i] (s NULL for aggr "sum", where s is 1). */
void critgrad_plan(int64_t n, const double *keys_in, int64_t keys_stride, float *const *g,
                   const int64_t *numel, int key_mode, int threads, double *keys,
                   double *const *priority, int64_t *const *age, int64_t *const *stats,
                   int64_t capacity, int selection, uint64_t seed, int per_tensor_streams,
                   int aggr, double kappa, double scale, uint8_t *admit, int64_t *slot,
                   int64_t *filled, float *b, float *s) {
    if (keys_in != NULL)
        for (int64_t i = 0; i < n; i++) keys[i] = keys_in[i * keys_stride];
    else
        gradient_keys(n, g, numel, key_mode, threads, keys);
    uint32_t base = hash32((uint32_t)(seed >> 32) ^ hash32((uint32_t)(seed & 0xFFFFFFFFu)));
    for (int64_t i = 0; i < n; i++) {
        double key = keys[i];
        const double *pr = priority[i];
        const int64_t *ag = age[i];
        int64_t full = 0;
        for (int64_t k = 0; k < capacity; k++) full += ag[k] >= 0;
        int has_room = full < capacity;
        int64_t victim = 0;
        int enters = 1;
        /* argmin/argmax: the first index among equal values */
        if (selection == CRITICAL || selection == SMALLEST) {
            for (int64_t k = 1; k < capacity; k++)
                if (selection == CRITICAL ? pr[k] < pr[victim] : pr[k] > pr[victim]) victim = k;
            enters = has_room || (selection == CRITICAL ? key > pr[victim] : key < pr[victim]);
        } else if (selection == RECENT) {
            for (int64_t k = 1; k < capacity; k++)
                if (ag[k] > ag[victim]) victim = k;
        } else { /* RANDOM: critgrad.memory.random_slots */
            uint64_t stream = per_tensor_streams ? (uint64_t)i : 0;
            uint64_t counter = (uint64_t)stats[i][OFFERED];
            uint32_t x = hash32((uint32_t)stream ^ base);
            x = hash32(x ^ (uint32_t)(counter >> 32));
            x = hash32(x ^ (uint32_t)(counter & 0xFFFFFFFFu));
            victim = (int64_t)(((uint64_t)x * (uint64_t)capacity) >> 32);
        }
        slot[i] = has_room ? full : victim;
        admit[i] = is_finite(key) && enters;
        filled[i] = full;
        double count = (double)full, c, f;
        if (aggr == AGGR_MEAN) {
            c = kappa;
            f = 1.0 / (count + 1.0);
        } else {
            c = kappa / (count < 1.0 ? 1.0 : count);
            f = aggr == AGGR_SUM ? 1.0 : 0.5;
        }
        if (full == 0) {
            c = 0.0;
            f = 1.0;
        }
        b[i] = (float)(c * f / scale);
        if (s != NULL) s[i] = (float)f;
    }
}

/* After the base step: where admit[i], store[i][slot[i]] = g[i] and the scaled sum t[i]
 * trades the old entry for the new one; each sum's resync chunk is recomputed from the store
 * (critgrad.memory.resync_: the elements [start, start + length) modulo numel, with period =
 * resync_per_slot * capacity, length = ceil(numel / period), start = (offers % period) * length);
 * then for each tensor the
 * admitted key takes its slot with age 0, every priority is multiplied by decay, every filled
 * entry ages by one, the counts of critgrad.memory.STAT_FIELDS grow and the key is kept. */
static void bookkeep(int64_t n, float *const *store, float *const *t, const int64_t *numel,
                     double *const *priority, int64_t *const *age, int64_t *const *stats,
                     double *const *key, const double *keys,
                     const uint8_t *admit, const int64_t *slot, const int64_t *filled,
                     int64_t capacity, int64_t resync_per_slot, float scale, double decay);

void critgrad_finish(int64_t n, float *const *store, float *const *t, float *const *g,
                     const int64_t *numel, const int64_t *offset, double *const *priority,
                     int64_t *const *age, int64_t *const *stats, double *const *key,
                     const double *keys, const uint8_t *admit,
                     const int64_t *slot, const int64_t *filled, int64_t capacity,
                     int64_t resync_per_slot, float scale, double decay, int threads) {
    write_all(n, store, t, g, numel, offset, slot, admit, scale, threads);
    bookkeep(n, store, t, numel, priority, age, stats, key, keys, admit, slot,
             filled, capacity, resync_per_slot, scale, decay);
}

/* The whole step of a group whose base is torch's Adam or AdamW: each tensor's step counter
 * counts the step (steps[i], float32), Adam's update runs on the direction fused with the slot
 * writes, then the resyncs and the bookkeeping of critgrad_finish. adam_scalars holds lr, beta1,
 * beta2, eps and weight_decay; flags: decoupled weight decay, maximize, and momenta: Adam_CM's
 * step instead (the memory holds momenta; its weight decay is decoupled). */
void critgrad_adam(int64_t n, float *const *store, float *const *t, float *const *g,
                   const int64_t *numel, const int64_t *offset, double *const *priority,
                   int64_t *const *age, int64_t *const *stats, double *const *key,
                   const double *keys, const uint8_t *admit,
                   const int64_t *slot, const int64_t *filled, const float *b, const float *s,
                   float *const *p, float *const *m, float *const *v, float *const *vmax,
                   float *const *steps, const double *adam_scalars, int decoupled, int maximize,
                   int momenta, int64_t capacity, int64_t resync_per_slot, float scale,
                   double decay, float *neg_step_size, float *bc2_sqrt, int threads) {
    double lr = adam_scalars[0], beta1 = adam_scalars[1], beta2 = adam_scalars[2];
    double eps = adam_scalars[3], weight_decay = adam_scalars[4];
    /* torch's Python scalars, as its float32 kernels receive them */
    AdamOptions options = {(float)(1.0 - beta1), (float)beta2,        (float)(1.0 - beta2),
                           (float)eps,           (float)weight_decay, (float)(1.0 - lr * weight_decay),
                           decoupled,            maximize};
    for (int64_t i = 0; i < n; i++) {
        *steps[i] += 1.0f;
        double step = (double)*steps[i];
        double bias_correction1 = 1.0 - pow(beta1, step);
        double bias_correction2 = 1.0 - pow(beta2, step);
        neg_step_size[i] = (float)(-(lr / bias_correction1));
        bc2_sqrt[i] = (float)pow(bias_correction2, 0.5);
    }
    Work work = {.kind = momenta ? 4 : 2, .n = n, .g = g, .t = t, .store = store, .numel = numel,
                 .offset = offset, .b = b, .s = s, .slot = slot, .admit = admit, .scale = scale,
                 .p = p, .m = m, .v = v, .vmax = vmax, .options = &options,
                 .neg_step_size = neg_step_size, .bc2_sqrt = bc2_sqrt};
    run_parallel(&work, threads);
    bookkeep(n, store, t, numel, priority, age, stats, key, keys, admit, slot,
             filled, capacity, resync_per_slot, scale, decay);
}

/* The same for torch's SGD: sgd_scalars holds lr, weight_decay, momentum, dampening; bufs the
 * momentum buffers (NULL without momentum). */
void critgrad_sgd(int64_t n, float *const *store, float *const *t, float *const *g,
                  const int64_t *numel, const int64_t *offset, double *const *priority,
                  int64_t *const *age, int64_t *const *stats, double *const *key,
                  const double *keys, const uint8_t *admit,
                  const int64_t *slot, const int64_t *filled, const float *b, const float *s,
                  float *const *p, float *const *bufs, const double *sgd_scalars, int nesterov,
                  int maximize, int64_t capacity, int64_t resync_per_slot, float scale,
                  double decay, int threads) {
    /* torch's Python scalars, as its float32 kernels receive them */
    SGDOptions options = {(float)(-sgd_scalars[0]), (float)sgd_scalars[1], (float)sgd_scalars[2],
                          (float)(1.0 - sgd_scalars[3]), nesterov, maximize};
    Work work = {.kind = 3, .n = n, .g = g, .t = t, .store = store, .numel = numel,
                 .offset = offset, .b = b, .s = s, .slot = slot, .admit = admit, .scale = scale,
                 .p = p, .v = bufs, .sgd = &options};
    run_parallel(&work, threads);
    bookkeep(n, store, t, numel, priority, age, stats, key, keys, admit, slot,
             filled, capacity, resync_per_slot, scale, decay);
}

static void bookkeep(int64_t n, float *const *store, float *const *t, const int64_t *numel,
                     double *const *priority, int64_t *const *age, int64_t *const *stats,
                     double *const *key, const double *keys,
                     const uint8_t *admit, const int64_t *slot, const int64_t *filled,
                     int64_t capacity, int64_t resync_per_slot, float scale, double decay) {
    const Kernels *kern = kernels();
    for (int64_t i = 0; i < n; i++) /* the count of offers before this one */
        resync_one(kern, store[i], t[i], numel[i], capacity, resync_per_slot * capacity,
                   stats[i][OFFERED], scale);
    for (int64_t i = 0; i < n; i++) {
        double offered = keys[i];
        double *pr = priority[i];
        int64_t *ag = age[i];
        int64_t *st = stats[i];
        int64_t old_age = ag[slot[i]];
        for (int64_t k = 0; k < capacity; k++) {
            int taken = admit[i] && k == slot[i];
            pr[k] = (taken ? offered : pr[k]) * decay;
            if (taken) ag[k] = 0;
            ag[k] += ag[k] >= 0;
        }
        int finite = is_finite(offered);
        int evicted = admit[i] && old_age >= 0;
        st[OFFERED] += 1;
        st[ADMITTED] += admit[i];
        st[REJECTED] += finite && filled[i] >= capacity && !admit[i];
        st[NONFINITE] += !finite;
        st[EVICTED] += evicted;
        st[EVICTED_AGE_SUM] += evicted ? old_age : 0;
        key[i][0] = offered;
    }
}
