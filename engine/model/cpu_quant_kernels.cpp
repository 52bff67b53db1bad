// Quantized CPU matmuls, y = x W^T with fp32 accumulation: weight-only (fp32 activations) for int8 weights
// with fp32 group scales and for fp16 weights; and int8 or packed 4-bit weights against activations
// quantized per 32 (integer dot products, below). AVX2 + FMA (+ F16C for fp16);
// built by torch.utils.cpp_extension from engine/model/cpu_quant.py only where the CPU has them.
// Decode matmuls are bound by reading the weights, so 1-2 byte weights widened in registers beat
// fp32 weights; a 2-row x 4-token register tile reuses each widened weight vector four times.
#include <immintrin.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Weight rows widened to fp32 into a small buffer that stays in L1: int8 q * scale (+ offset) per group of
// columns, or fp16 values. `widen(n, count, out)` writes rows n .. n + count - 1 as [count, K] floats.
template <bool HasOffset>
struct Int8Rows {
  const int8_t* q;
  const float* scale;   // [N, K / group]
  const float* offset;  // [N, K / group], read only when HasOffset
  int64_t K, group;
  int64_t group_size() const { return group; }
  void widen(int64_t n0, int64_t count, float* out) const {
    const int64_t groups = K / group;
    for (int64_t n = n0; n < n0 + count; ++n, out += K) {
      const int8_t* row = q + n * K;
      for (int64_t g = 0; g < groups; ++g) {
        const __m256 s = _mm256_set1_ps(scale[n * groups + g]);
        const __m256 o = HasOffset ? _mm256_set1_ps(offset[n * groups + g]) : _mm256_setzero_ps();
        for (int64_t k = g * group; k < (g + 1) * group; k += 8) {
          const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k));
          const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
          _mm256_storeu_ps(out + k, HasOffset ? _mm256_fmadd_ps(v, s, o) : _mm256_mul_ps(v, s));
        }
      }
    }
  }
  // One token (a decode step of one sequence): widen in registers, scale each group's partial sum once.
  // xsum[g] = the token's sum over group g, for the offsets. Rows n0 .. n0 + 3.
  void gemv4(int64_t n0, const float* x, const float* xsum, float* out) const {
    const int64_t groups = K / group;
    const int8_t *r0 = q + n0 * K, *r1 = r0 + K, *r2 = r1 + K, *r3 = r2 + K;
    const float *s0 = scale + n0 * groups, *s1 = s0 + groups, *s2 = s1 + groups, *s3 = s2 + groups;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t g = 0; g < groups; ++g) {
      __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0;
      for (int64_t k = g * group; k < (g + 1) * group; k += 8) {
        const __m256 xv = _mm256_loadu_ps(x + k);
        p0 = _mm256_fmadd_ps(widen8(r0 + k), xv, p0);
        p1 = _mm256_fmadd_ps(widen8(r1 + k), xv, p1);
        p2 = _mm256_fmadd_ps(widen8(r2 + k), xv, p2);
        p3 = _mm256_fmadd_ps(widen8(r3 + k), xv, p3);
      }
      a0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(s0[g]), a0);
      a1 = _mm256_fmadd_ps(p1, _mm256_set1_ps(s1[g]), a1);
      a2 = _mm256_fmadd_ps(p2, _mm256_set1_ps(s2[g]), a2);
      a3 = _mm256_fmadd_ps(p3, _mm256_set1_ps(s3[g]), a3);
    }
    const __m256 acc[4] = {a0, a1, a2, a3};
    for (int i = 0; i < 4; ++i) {
      float v = hsum(acc[i]);
      if (HasOffset)
        for (int64_t g = 0; g < groups; ++g) v += offset[(n0 + i) * groups + g] * xsum[g];
      out[i] = v;
    }
  }
  static inline __m256 widen8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
};

struct Fp16Rows {
  const at::Half* w;
  int64_t K;
  void widen(int64_t n0, int64_t count, float* out) const {
    for (int64_t n = n0; n < n0 + count; ++n, out += K) {
      const at::Half* row = w + n * K;
      int64_t k = 0;
      for (; k + 8 <= K; k += 8)
        _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k))));
      for (; k < K; ++k) out[k] = static_cast<float>(row[k]);
    }
  }
  // One token: widen in registers (needs K % 8 == 0). Rows n0 .. n0 + 3.
  void gemv4(int64_t n0, const float* x, const float*, float* out) const {
    const at::Half *r0 = w + n0 * K, *r1 = r0 + K, *r2 = r1 + K, *r3 = r2 + K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k < K; k += 8) {
      const __m256 xv = _mm256_loadu_ps(x + k);
      a0 = _mm256_fmadd_ps(widen8(r0 + k), xv, a0);
      a1 = _mm256_fmadd_ps(widen8(r1 + k), xv, a1);
      a2 = _mm256_fmadd_ps(widen8(r2 + k), xv, a2);
      a3 = _mm256_fmadd_ps(widen8(r3 + k), xv, a3);
    }
    out[0] = hsum(a0); out[1] = hsum(a1); out[2] = hsum(a2); out[3] = hsum(a3);
  }
  static inline __m256 widen8(const at::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  int64_t group_size() const { return K; }
};


// The micro-kernels name every accumulator: GCC keeps an accumulator array on the stack (a store per FMA).
// Row pair (w0, w1: K floats each) against 4 tokens x0 .. x0 + 3K: out[j * N + i] for i < 2, j < 4.
inline void dot_2x4(const float* w0, const float* w1, const float* x, float* out, int64_t K, int64_t N) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  const float *x0 = x, *x1 = x + K, *x2 = x + 2 * K, *x3 = x + 3 * K;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 u = _mm256_loadu_ps(w0 + k), v = _mm256_loadu_ps(w1 + k);
    __m256 t = _mm256_loadu_ps(x0 + k);
    a00 = _mm256_fmadd_ps(u, t, a00); a10 = _mm256_fmadd_ps(v, t, a10);
    t = _mm256_loadu_ps(x1 + k);
    a01 = _mm256_fmadd_ps(u, t, a01); a11 = _mm256_fmadd_ps(v, t, a11);
    t = _mm256_loadu_ps(x2 + k);
    a02 = _mm256_fmadd_ps(u, t, a02); a12 = _mm256_fmadd_ps(v, t, a12);
    t = _mm256_loadu_ps(x3 + k);
    a03 = _mm256_fmadd_ps(u, t, a03); a13 = _mm256_fmadd_ps(v, t, a13);
  }
  const __m256 acc[2][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}};
  const float* ws[2] = {w0, w1};
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      float s = hsum(acc[i][j]);
      for (int64_t t = k; t < K; ++t) s += ws[i][t] * x[j * K + t];
      out[j * N + i] = s;
    }
}

// One widened row against one token.
inline float dot_1x1(const float* w, const float* x, int64_t K) {
  __m256 a = _mm256_setzero_ps(), b = a;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    a = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a);
    b = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), b);
  }
  float s = hsum(_mm256_add_ps(a, b));
  for (; k < K; ++k) s += w[k] * x[k];
  return s;
}

inline std::vector<int64_t> out_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return shape;
}

constexpr int64_t kRows = 8;  // weight rows widened at a time: 8 x K floats stay in L1 for K up to ~1K

template <typename W>
at::Tensor linear(const at::Tensor& x_in, const W& w, int64_t N) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "activations must be float32");
  const at::Tensor x = x_in.reshape({-1, x_in.size(-1)}).contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  at::Tensor out = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (M == 1 && K % 8 == 0) {
    // xsum: the token's sum per weight group (the offsets' term), K / group floats.
    const int64_t G = w.group_size();
    std::vector<float> xsum(K / G, 0.0f);
    for (int64_t k = 0; k < K; ++k) xsum[k / G] += xp[k];
    at::parallel_for(0, (N + 3) / 4, 16, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t n0 = 4 * b;
        if (n0 + 4 <= N) {
          w.gemv4(n0, xp, xsum.data(), op + n0);
        } else {
          std::vector<float> buf(K);
          for (int64_t n = n0; n < N; ++n) {
            w.widen(n, 1, buf.data());
            op[n] = dot_1x1(buf.data(), xp, K);
          }
        }
      }
    });
    return out.view(out_shape(x_in, N));
  }
  // Each weight row is read from memory once and widened once into an L1 buffer, then used for every token.
  at::parallel_for(0, (N + kRows - 1) / kRows, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(kRows * K);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kRows, count = std::min(kRows, N - n0);
      w.widen(n0, count, buf.data());
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) {
        int64_t i = 0;
        for (; i + 2 <= count; i += 2)
          dot_2x4(buf.data() + i * K, buf.data() + (i + 1) * K, xp + m * K, op + m * N + n0 + i, K, N);
        for (; i < count; ++i)
          for (int64_t j = m; j < m + 4; ++j) op[j * N + n0 + i] = dot_1x1(buf.data() + i * K, xp + j * K, K);
      }
      for (; m < M; ++m)
        for (int64_t i = 0; i < count; ++i) op[m * N + n0 + i] = dot_1x1(buf.data() + i * K, xp + m * K, K);
    }
  });
  return out.view(out_shape(x_in, N));
}

// ---- int8 weights x int8 activations (llama.cpp's Q8_0 dot): activations quantized per block of 32 ----
// Each token's activations get one scale per 32 values (max |x| / 127, rounded as Q8_0). A block's dot
// product is exact in integers (maddubs + madd), then scaled once by weight scale x activation scale, so
// one int8 weight costs a fraction of widening it to fp32. Offsets (Q4_1, AWQ/GPTQ zero points) meet the
// sums of the quantized values, as llama.cpp's Q8_1 does: the result is exactly W x_q, whose error is
// W (x - x_q). With fp32 sums, codes that are all >= 0 would scale the rounding error by the code, not by
// the weight (measured on the Q4_1 default: perplexity +1.97% with fp32 sums, +0.52% with these).
// Needs K % 32 == 0 and a weight group that is a multiple of 32.
constexpr int64_t kBlock = 32;

struct Q8Tokens {
  std::vector<int8_t> q, abs_q;  // [M, K]: the codes, and |codes| for int8 weights (the sign trick), else empty
  std::vector<float> scale;      // [M, K / 32]
  std::vector<float> group_sum;  // [M, K / group]: sums of the quantized values, for the offsets
};

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// Codes are rounded half away from zero as trunc(v + copysign(0.5, v)) in fp32 (the tests' reference does
// the same arithmetic; roundf differs only where v + 0.5 rounds up in fp32).
Q8Tokens quantize_tokens(const float* x, int64_t M, int64_t K, int64_t group, bool sums, bool abs_codes) {
  const int64_t blocks = M * K / kBlock, per_group = group / kBlock;
  Q8Tokens t{std::vector<int8_t>(M * K), std::vector<int8_t>(abs_codes ? M * K : 0), std::vector<float>(blocks),
             std::vector<float>(sums ? M * K / group : 0, 0.0f)};
  const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the packs' lane interleave
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + b * kBlock;
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(xb + 8 * j);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
    }
    const float m = hmax(amax), d = m / 127.0f;
    const __m256 inv = _mm256_set1_ps(m > 0.0f ? 1.0f / d : 0.0f);
    __m256i c[4];
    for (int j = 0; j < 4; ++j) {
      const __m256 scaled = _mm256_mul_ps(v[j], inv);
      const __m256 away = _mm256_add_ps(scaled, _mm256_or_ps(_mm256_and_ps(scaled, sign), half));
      c[j] = _mm256_cvttps_epi32(away);
    }
    const __m256i bytes = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3])), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(t.q.data() + b * kBlock), bytes);
    if (abs_codes)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(t.abs_q.data() + b * kBlock), _mm256_abs_epi8(bytes));
    t.scale[b] = d;
    if (sums) {  // of the quantized values, so that the offset term sees the same activations as the dot
      const __m256i total = _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
      t.group_sum[b / per_group] += d * hsum(_mm256_cvtepi32_ps(total));
    }
  }
  return t;
}

// ---- Weights interleaved 8 rows wide for the integer dots (as llama.cpp repacks its Q4_0 / Q8_0 for AVX2) ----
// A group of 8 rows is stored block by block: each 32-byte vector holds 4 consecutive codes of each of the
// 8 rows (int8), or 8 (4-bit, the second 4 in the high nibbles), so one maddubs against a token's 4
// activations broadcast leaves one partial sum per row in each lane: a block's 32 products per row come
// out in one vector, scaled once by the 8 rows' scales (a vector load) times the token's. 4-bit products
// (|pair| <= 2 x 15 x 127) sum in int16 over the whole block; int8 ones (sign trick) in int32. A tile of
// up to 4 tokens shares each weight vector; the row group (a few KB) stays in L1 across tiles.
constexpr int64_t kLanes = 8;

template <bool Packed, int T>
inline void x8_tile(const uint8_t* wg, const float* sg, const float* og, const Q8Tokens& t, int64_t m0,
                    int64_t K, int64_t group, float* out, int64_t N) {
  const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
  const int64_t blocks = K / kBlock, per_group = group / kBlock, groups = K / group;
  const int8_t* xq[T];
  const int8_t* xa[T];
  const float* xs[T];
  __m256 acc[T];
  for (int j = 0; j < T; ++j) {
    xq[j] = t.q.data() + (m0 + j) * K;
    xa[j] = Packed ? nullptr : t.abs_q.data() + (m0 + j) * K;
    xs[j] = t.scale.data() + (m0 + j) * blocks;
    acc[j] = _mm256_setzero_ps();
  }
  auto bcast = [](const int8_t* p) { return _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(p)); };
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i sum[T];
    if constexpr (Packed) {
      const uint8_t* wb = wg + b * kBlock * kLanes / 2;
      for (int c = 0; c < 4; ++c) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 32 * c));
        const __m256i lo = _mm256_and_si256(raw, low), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
        for (int j = 0; j < T; ++j) {
          const int8_t* x = xq[j] + b * kBlock + 8 * c;
          const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast(x)), _mm256_maddubs_epi16(hi, bcast(x + 4)));
          sum[j] = c == 0 ? p : _mm256_add_epi16(sum[j], p);
        }
      }
      for (int j = 0; j < T; ++j) sum[j] = _mm256_madd_epi16(sum[j], ones);
    } else {
      const uint8_t* wb = wg + b * kBlock * kLanes;
      for (int s = 0; s < 8; ++s) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 32 * s));
        for (int j = 0; j < T; ++j) {
          const int64_t k = b * kBlock + 4 * s;
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(bcast(xa[j] + k), _mm256_sign_epi8(w, bcast(xq[j] + k))), ones);
          sum[j] = s == 0 ? p : _mm256_add_epi32(sum[j], p);
        }
      }
    }
    const __m256 dw = _mm256_loadu_ps(sg + (b / per_group) * kLanes);
    for (int j = 0; j < T; ++j)
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[j]), _mm256_mul_ps(dw, _mm256_set1_ps(xs[j][b])), acc[j]);
  }
  if (og != nullptr)
    for (int64_t g = 0; g < groups; ++g) {
      const __m256 o = _mm256_loadu_ps(og + g * kLanes);
      for (int j = 0; j < T; ++j) acc[j] = _mm256_fmadd_ps(o, _mm256_set1_ps(t.group_sum[(m0 + j) * groups + g]), acc[j]);
    }
  for (int j = 0; j < T; ++j) _mm256_storeu_ps(out + (m0 + j) * N, acc[j]);
}

template <bool Packed>
void x8_linear(const Q8Tokens& t, int64_t M, const uint8_t* q, const float* scale, const float* offset, int64_t N,
               int64_t K, int64_t group, float* out) {
  const int64_t groups = K / group, group_bytes = Packed ? K * kLanes / 2 : K * kLanes;
  at::parallel_for(0, N / kLanes, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint8_t* wg = q + r * group_bytes;
      const float* sg = scale + r * groups * kLanes;
      const float* og = offset == nullptr ? nullptr : offset + r * groups * kLanes;
      float* o = out + r * kLanes;
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) x8_tile<Packed, 4>(wg, sg, og, t, m, K, group, o, N);
      switch (M - m) {
        case 3: x8_tile<Packed, 3>(wg, sg, og, t, m, K, group, o, N); break;
        case 2: x8_tile<Packed, 2>(wg, sg, og, t, m, K, group, o, N); break;
        case 1: x8_tile<Packed, 1>(wg, sg, og, t, m, K, group, o, N); break;
        default: break;
      }
    }
  });
}

// x [.., K] against interleaved weights: q int8 [N / 8, 8 K] or packed uint8 [N / 8, 4 K]; scale (and offset)
// [N / 8, K / group, 8] fp32 (engine.model.quant.InterleavedWeight.of). K and the group: multiples of 32.
at::Tensor int8_x8_linear(const at::Tensor& x_in, const at::Tensor& q, const at::Tensor& scale, const at::Tensor& offset) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "activations must be float32");
  const bool packed = q.scalar_type() == at::kByte;
  TORCH_CHECK(q.dim() == 2 && (packed || q.scalar_type() == at::kChar) && q.is_contiguous(),
              "int8_x8_linear: q must be contiguous int8 [N / 8, 8 K] or packed uint8 [N / 8, 4 K]");
  const int64_t N = q.size(0) * kLanes, K = q.size(1) / (packed ? kLanes / 2 : kLanes);
  TORCH_CHECK(x_in.size(-1) == K && K % kBlock == 0, "int8_x8_linear: x's last dim must be K, a multiple of 32");
  TORCH_CHECK(scale.dim() == 3 && scale.size(0) == N / kLanes && scale.size(2) == kLanes &&
              scale.scalar_type() == at::kFloat && scale.is_contiguous(), "int8_x8_linear: scale must be [N / 8, K / group, 8]");
  const int64_t group = K / scale.size(1);
  TORCH_CHECK(group * scale.size(1) == K && group % kBlock == 0, "int8_x8_linear: group size must divide K and be a multiple of 32");
  const bool has_offset = offset.numel() > 0;
  TORCH_CHECK(!has_offset || (offset.sizes() == scale.sizes() && offset.scalar_type() == at::kFloat && offset.is_contiguous()),
              "int8_x8_linear: offset must be empty or shaped like scale");
  const at::Tensor x = x_in.reshape({-1, K}).contiguous();
  const int64_t M = x.size(0);
  const Q8Tokens t = quantize_tokens(x.data_ptr<float>(), M, K, group, has_offset, !packed);
  at::Tensor out = at::empty({M, N}, x.options());
  const uint8_t* qp = static_cast<const uint8_t*>(q.data_ptr());
  const float* op = has_offset ? offset.data_ptr<float>() : nullptr;
  if (packed) x8_linear<true>(t, M, qp, scale.data_ptr<float>(), op, N, K, group, out.data_ptr<float>());
  else x8_linear<false>(t, M, qp, scale.data_ptr<float>(), op, N, K, group, out.data_ptr<float>());
  return out.view(out_shape(x_in, N));
}

// w [N, K] int8; scale (and offset, when it has elements) [N, K / group] fp32: W = q * scale + offset.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, const at::Tensor& offset) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.is_contiguous(), "int8_linear: q must be contiguous int8 [N, K]");
  TORCH_CHECK(x.size(-1) == q.size(1), "int8_linear: x's last dim must be K");
  const int64_t N = q.size(0), K = q.size(1);
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == N && scale.scalar_type() == at::kFloat && scale.is_contiguous(),
              "int8_linear: scale must be contiguous fp32 [N, K / group]");
  const int64_t group = K / scale.size(1);
  TORCH_CHECK(group * scale.size(1) == K && group % 8 == 0, "int8_linear: group size must divide K and be a multiple of 8");
  const bool has_offset = offset.numel() > 0;
  TORCH_CHECK(!has_offset || (offset.sizes() == scale.sizes() && offset.scalar_type() == at::kFloat && offset.is_contiguous()),
              "int8_linear: offset must be empty or shaped like scale");
  if (has_offset)
    return linear(x, Int8Rows<true>{q.data_ptr<int8_t>(), scale.data_ptr<float>(), offset.data_ptr<float>(), K, group}, N);
  return linear(x, Int8Rows<false>{q.data_ptr<int8_t>(), scale.data_ptr<float>(), nullptr, K, group}, N);
}

// The fp32 matrix [N, K] of interleaved weights (as int8_x8_linear takes them), for prefill-sized GEMMs: each
// row group is put back row by row into a small buffer, then widened with its scales as Int8Rows widens.
at::Tensor int8_dequantize(const at::Tensor& q, const at::Tensor& scale, const at::Tensor& offset) {
  const bool packed = q.scalar_type() == at::kByte;
  TORCH_CHECK(q.dim() == 2 && (packed || q.scalar_type() == at::kChar) && q.is_contiguous(),
              "int8_dequantize: q must be contiguous int8 [N / 8, 8 K] or packed uint8 [N / 8, 4 K]");
  const int64_t N = q.size(0) * kLanes, K = q.size(1) / (packed ? kLanes / 2 : kLanes);
  TORCH_CHECK(K % kBlock == 0 && scale.dim() == 3 && scale.size(0) == N / kLanes && scale.size(2) == kLanes &&
              scale.is_contiguous(), "int8_dequantize: scale must be contiguous fp32 [N / 8, K / group, 8]");
  const int64_t groups = scale.size(1), group = K / groups;
  const bool has_offset = offset.numel() > 0;
  at::Tensor out = at::empty({N, K}, scale.options());
  const uint8_t* qp = static_cast<const uint8_t*>(q.data_ptr());
  at::parallel_for(0, N / kLanes, 4, [&](int64_t begin, int64_t end) {
    std::vector<int8_t> codes(kLanes * K);
    std::vector<float> s(kLanes * groups), o(has_offset ? kLanes * groups : 0);
    for (int64_t r = begin; r < end; ++r) {
      const uint8_t* wg = qp + r * q.size(1);
      for (int64_t b = 0; b < K / kBlock; ++b)
        for (int c = 0; c < (packed ? 4 : 8); ++c) {  // one 32-byte vector: 4 codes (or 4 + 4) of each row
          const uint8_t* v = wg + b * kBlock * kLanes / (packed ? 2 : 1) + 32 * c;
          for (int64_t i = 0; i < kLanes; ++i)
            for (int kk = 0; kk < 4; ++kk) {
              const uint8_t byte = v[4 * i + kk];
              int8_t* dst = codes.data() + i * K + b * kBlock + (packed ? 8 : 4) * c + kk;
              if (packed) { dst[0] = byte & 0x0F; dst[4] = byte >> 4; }
              else dst[0] = static_cast<int8_t>(byte);
            }
        }
      const float* sg = scale.data_ptr<float>() + r * groups * kLanes;
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t i = 0; i < kLanes; ++i) {
          s[i * groups + g] = sg[g * kLanes + i];
          if (has_offset) o[i * groups + g] = offset.data_ptr<float>()[(r * groups + g) * kLanes + i];
        }
      float* dst = out.data_ptr<float>() + r * kLanes * K;
      if (has_offset) Int8Rows<true>{codes.data(), s.data(), o.data(), K, group}.widen(0, kLanes, dst);
      else Int8Rows<false>{codes.data(), s.data(), nullptr, K, group}.widen(0, kLanes, dst);
    }
  });
  return out;
}

at::Tensor fp16_linear(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kHalf && w.is_contiguous(), "fp16_linear: w must be contiguous fp16 [N, K]");
  TORCH_CHECK(x.size(-1) == w.size(1), "fp16_linear: x's last dim must be K");
  return linear(x, Fp16Rows{w.data_ptr<at::Half>(), w.size(1)}, w.size(0));
}

}  // namespace

TORCH_LIBRARY(exaone_cpu, m) {
  m.def("int8_linear(Tensor x, Tensor q, Tensor scale, Tensor offset) -> Tensor");
  m.def("int8_x8_linear(Tensor x, Tensor q, Tensor scale, Tensor offset) -> Tensor");
  m.def("int8_dequantize(Tensor q, Tensor scale, Tensor offset) -> Tensor");
  m.def("fp16_linear(Tensor x, Tensor w) -> Tensor");
}

TORCH_LIBRARY_IMPL(exaone_cpu, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int8_x8_linear", &int8_x8_linear);
  m.impl("int8_dequantize", &int8_dequantize);
  m.impl("fp16_linear", &fp16_linear);
}
