// Decode attention on the CPU that reads the paged KV cache in place: one query token per sequence, fp32,
// AVX2 + FMA. Built by torch.utils.cpp_extension from engine/attention/cpu_decode.py only where the CPU has
// them. The torch path gathers every sequence's blocks into a dense copy per layer and runs SDPA on it,
// reading the context three times; here each key and value row is read once, by the one task (sequence,
// KV head) that needs it, for all the query heads grouped under that KV head.
#include <immintrin.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x for x <= 0 (scores minus their maximum), Cephes' polynomial after the split x = n ln2 + r: relative
// error ~1e-7, as SDPA's vectorised exp. Lanes below -87 give 0 (their weight is below fp32's smallest
// normal anyway), so -inf (a masked slot) gives exactly 0.
inline __m256 exp_nonpositive(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n)));
}

constexpr int kMaxGroup = 16;  // query heads per KV head, each with a register accumulator for its dot

// What one task reads: its sequence's table, its KV heads [h0, h0 + heads), blocks [j0, j1).
struct Span {
  const float* q;    // the task's query heads, [heads * G, D]
  const bool* mask;  // the sequence's [G, T]
  const int64_t* table;
  int64_t h0, heads, j0, j1;
};

// The cache's shape and the call's constants.
struct Cache {
  const float *k, *v;
  int64_t block_size, row, G, D, T;  // row: floats from one slot to the next (all KV heads)
  float scale;

  // For each of the span's query heads hg: m[hg] = the largest visible score (or -inf), l[hg] = sum of
  // e^(score - m), acc[hg] = sum of e^(score - m) v: an unnormalised softmax over the span, merged by the caller.
  void attend(const Span& sp, float* scores, float* acc, float* m, float* l) const {
    const int64_t n = (sp.j1 - sp.j0) * block_size, HG = sp.heads * G;
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int64_t j = sp.j0; j < sp.j1; ++j) {
      const float* kb = k + sp.table[j] * block_size * row + sp.h0 * D;
      if (j + 1 < sp.j1) _mm_prefetch(reinterpret_cast<const char*>(k + sp.table[j + 1] * block_size * row), _MM_HINT_T0);
      for (int64_t s = 0; s < block_size; ++s) {
        const int64_t t = j * block_size + s, i = t - sp.j0 * block_size;
        bool any = false;
        for (int64_t g = 0; g < G; ++g) any |= sp.mask[g * T + t];
        if (!any) {
          for (int64_t hg = 0; hg < HG; ++hg) scores[hg * n + i] = ninf;
          continue;
        }
        for (int64_t h = 0; h < sp.heads; ++h) {
          const float* kr = kb + s * row + h * D;
          const float* qg = sp.q + h * G * D;
          __m256 dot[kMaxGroup];
          for (int64_t g = 0; g < G; ++g) dot[g] = _mm256_setzero_ps();
          for (int64_t d = 0; d < D; d += 8) {
            const __m256 kv = _mm256_loadu_ps(kr + d);
            for (int64_t g = 0; g < G; ++g) dot[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qg + g * D + d), kv, dot[g]);
          }
          for (int64_t g = 0; g < G; ++g) scores[(h * G + g) * n + i] = sp.mask[g * T + t] ? hsum(dot[g]) * scale : ninf;
        }
      }
    }
    for (int64_t hg = 0; hg < HG; ++hg) {  // scores become weights e^(s - m) in place
      float* sg = scores + hg * n;
      m[hg] = ninf;
      for (int64_t i = 0; i < n; ++i) m[hg] = std::max(m[hg], sg[i]);
      if (m[hg] == ninf) {  // nothing visible in the span
        std::fill(sg, sg + n, 0.0f);
        l[hg] = 0.0f;
        continue;
      }
      const __m256 mv = _mm256_set1_ps(m[hg]);
      __m256 sum = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 8 <= n; i += 8) {
        const __m256 p = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(sg + i), mv));
        _mm256_storeu_ps(sg + i, p);
        sum = _mm256_add_ps(sum, p);
      }
      float tail = 0.0f;
      for (; i < n; ++i) tail += (sg[i] = sg[i] == ninf ? 0.0f : std::exp(sg[i] - m[hg]));
      l[hg] = hsum(sum) + tail;
    }
    std::fill(acc, acc + HG * D, 0.0f);
    for (int64_t j = sp.j0; j < sp.j1; ++j) {
      const float* vb = v + sp.table[j] * block_size * row + sp.h0 * D;
      if (j + 1 < sp.j1) _mm_prefetch(reinterpret_cast<const char*>(v + sp.table[j + 1] * block_size * row), _MM_HINT_T0);
      for (int64_t s = 0; s < block_size; ++s) {
        const int64_t i = (j - sp.j0) * block_size + s;
        for (int64_t h = 0; h < sp.heads; ++h) {
          const float* vr = vb + s * row + h * D;
          for (int64_t g = 0; g < G; ++g) {
            const float w = scores[(h * G + g) * n + i];
            if (w == 0.0f) continue;
            const __m256 wv = _mm256_set1_ps(w);
            float* a = acc + (h * G + g) * D;
            for (int64_t d = 0; d < D; d += 8)
              _mm256_storeu_ps(a + d, _mm256_fmadd_ps(wv, _mm256_loadu_ps(vr + d), _mm256_loadu_ps(a + d)));
          }
        }
      }
    }
  }
};

// q [B, H, D]; kv_cache [2, num_blocks, block_size, Hkv, D]; block_tables [B, W] int64, every entry a valid
// block; mask [B, 1, G, W * block_size] bool (slot holds a token the query may see). Returns [B, H, D].
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& block_tables,
                        const at::Tensor& mask, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(), "paged_decode: q must be contiguous fp32 [B, H, D]");
  TORCH_CHECK(kv_cache.dim() == 5 && kv_cache.size(0) == 2 && kv_cache.scalar_type() == at::kFloat && kv_cache.is_contiguous(),
              "paged_decode: kv_cache must be contiguous fp32 [2, blocks, block_size, Hkv, D]");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t num_blocks = kv_cache.size(1), block_size = kv_cache.size(2), Hkv = kv_cache.size(3);
  TORCH_CHECK(kv_cache.size(4) == D && D % 8 == 0 && H % Hkv == 0 && H / Hkv <= kMaxGroup,
              "paged_decode: head size must match and be a multiple of 8, with at most 16 query heads per KV head");
  const int64_t G = H / Hkv;
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == B && block_tables.scalar_type() == at::kLong &&
              block_tables.is_contiguous(), "paged_decode: block_tables must be contiguous int64 [B, W]");
  const int64_t W = block_tables.size(1), T = W * block_size;
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.numel() == B * G * T,
              "paged_decode: mask must be contiguous bool [B, 1, G, W * block_size]");
  const float* kp = kv_cache.data_ptr<float>();
  const Cache cache{kp, kp + num_blocks * block_size * Hkv * D, block_size, Hkv * D, G, D, T, static_cast<float>(scale)};
  // A task is one sequence with all its heads: it streams each block's rows (every KV head side by side) in
  // order, which the prefetchers follow (a task per KV head read a third of each row and ran at ~half the
  // bandwidth on cold caches). Too few sequences to keep the threads busy: split by KV head, then by blocks
  // (each part an unnormalised softmax, merged below, as flash-decoding splits).
  const int64_t threads = at::get_num_threads();
  const int64_t split = B >= 2 * threads ? 1 : Hkv, heads = Hkv / split;
  const int64_t parts = std::max<int64_t>(1, std::min(W, (2 * threads + B * split - 1) / (B * split)));
  const int64_t HG = heads * G, tasks = B * split * parts, span_blocks = (W + parts - 1) / parts;
  at::Tensor out = at::empty_like(q);
  float* op = out.data_ptr<float>();
  // Split by blocks: each part's acc, then m and l, per query head, merged below. Unsplit: written out here.
  at::Tensor partial = at::empty({parts > 1 ? tasks : 0, HG, D + 2}, q.options());
  float* pp = partial.data_ptr<float>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(HG * span_blocks * block_size), acc(HG * D), m(HG), l(HG);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (split * parts), h0 = task / parts % split * heads, part = task % parts;
      const Span sp{q.data_ptr<float>() + (b * H + h0 * G) * D, mask.data_ptr<bool>() + b * G * T,
                    block_tables.data_ptr<int64_t>() + b * W, h0, heads, std::min(W, part * span_blocks),
                    std::min(W, (part + 1) * span_blocks)};
      cache.attend(sp, scores.data(), acc.data(), m.data(), l.data());
      for (int64_t hg = 0; hg < HG; ++hg) {
        const float* a = acc.data() + hg * D;
        if (parts == 1) {  // nothing visible (never for a real query, whose own token is cached): zeros
          const float inv = l[hg] > 0.0f ? 1.0f / l[hg] : 0.0f;
          float* o = op + (b * H + h0 * G + hg) * D;
          for (int64_t d = 0; d < D; ++d) o[d] = a[d] * inv;
          continue;
        }
        float* dst = pp + (task * HG + hg) * (D + 2);
        std::copy(a, a + D, dst);
        dst[D] = m[hg];
        dst[D + 1] = l[hg];
      }
    }
  });
  if (parts == 1) return out;
  at::parallel_for(0, B * split * HG, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {  // r: (b, h-split, hg); its parts are `parts` tasks apart in HG rows
      const int64_t bs = r / HG, hg = r % HG, b = bs / split, h0 = bs % split * heads;
      const float* first = pp + (bs * parts * HG + hg) * (D + 2);
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t p = 0; p < parts; ++p) mx = std::max(mx, first[p * HG * (D + 2) + D]);
      float* o = op + (b * H + h0 * G + hg) * D;
      std::fill(o, o + D, 0.0f);
      if (mx == -std::numeric_limits<float>::infinity()) continue;  // nothing visible (never for a real query)
      float total = 0.0f;
      for (int64_t p = 0; p < parts; ++p) {
        const float* src = first + p * HG * (D + 2);
        if (src[D + 1] == 0.0f) continue;
        const float w = std::exp(src[D] - mx);
        total += w * src[D + 1];
        for (int64_t d = 0; d < D; ++d) o[d] += w * src[d];
      }
      for (int64_t d = 0; d < D; ++d) o[d] /= total;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(exaone_cpu_attention, m) {
  m.def("paged_decode(Tensor q, Tensor kv_cache, Tensor block_tables, Tensor mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(exaone_cpu_attention, CPU, m) {
  m.impl("paged_decode", &paged_decode);
}
