// y[R, N] = x[R, K] @ w[K, N] for float32 on x86-64 CPUs with AVX2 and FMA, with w prepacked as
// p[N / 16][K][16] (column tile t holds columns 16t..16t+15, one contiguous stream).
//
// Why: with 2 to 16 rows XLA:CPU repacks every weight on every call, so a (K+1)-token verify
// forward costs far more than a 1-token one although both are bound by reading the weights.
// Streaming each prepacked tile once for all rows makes a few rows cost about what one does.
//
// Every output element is one fused multiply-add chain over k in order, whatever R is, so a
// row's result does not depend on which other rows share the call.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kTile = 16;         // columns per tile: two 8-float vectors
constexpr int64_t kMaxGroup = 6;      // rows per pass: 12 accumulators + 2 weights + 1 input
constexpr int64_t kPrefetch = 256;    // floats ahead (1 KiB) in a tile's stream

template <int G>
__attribute__((target("avx2,fma"))) inline void Tile(const float* x, int64_t K,
                                                     const float* tile, float* y, int64_t N) {
  __m256 acc[G][2];
  for (int r = 0; r < G; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const float* w = tile;
  for (int64_t k = 0; k < K; ++k, w += kTile) {
    _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetch), _MM_HINT_T0);
    const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
    for (int r = 0; r < G; ++r) {
      const __m256 b = _mm256_broadcast_ss(x + r * K + k);
      acc[r][0] = _mm256_fmadd_ps(b, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(b, w1, acc[r][1]);
    }
  }
  for (int r = 0; r < G; ++r) {
    _mm256_storeu_ps(y + r * N, acc[r][0]);
    _mm256_storeu_ps(y + r * N + 8, acc[r][1]);
  }
}

// Tiles [t0, t1): all rows, in passes of at most kMaxGroup rows (a tile stays in L2 between).
__attribute__((target("avx2,fma"))) void Tiles(const float* x, int64_t R, int64_t K, const float* p, float* y, int64_t N,
           int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* tile = p + t * K * kTile;
    for (int64_t r = 0; r < R; r += kMaxGroup) {
      const float* xr = x + r * K;
      float* yr = y + r * N + t * kTile;
      switch (std::min(kMaxGroup, R - r)) {
        case 1: Tile<1>(xr, K, tile, yr, N); break;
        case 2: Tile<2>(xr, K, tile, yr, N); break;
        case 3: Tile<3>(xr, K, tile, yr, N); break;
        case 4: Tile<4>(xr, K, tile, yr, N); break;
        case 5: Tile<5>(xr, K, tile, yr, N); break;
        default: Tile<6>(xr, K, tile, yr, N); break;
      }
    }
  }
}

// Chunks of tiles are claimed from a counter by the calling thread and by helpers on XLA's
// intra-op pool. The caller never waits for a helper that has not started (it claims the
// chunks itself), so independent dense ops running at once cannot deadlock the pool.
struct Work {
  const float* x;
  const float* p;
  float* y;
  int64_t R, K, N, tiles, chunk, num_chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Run() {
    for (int64_t c; (c = next.fetch_add(1)) < num_chunks;) {
      Tiles(x, R, K, p, y, N, c * chunk, std::min(tiles, (c + 1) * chunk));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error PackedDenseImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> p, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto pd = p.dimensions();
  if (xd.size() != 2 || pd.size() != 3 || pd[2] != kTile || pd[1] != xd[1]) {
    return ffi::Error::InvalidArgument("packed_dense: want x[R, K] and p[N/16, K, 16]");
  }
  auto work = std::make_shared<Work>();
  work->x = x.typed_data();
  work->p = p.typed_data();
  work->y = y->typed_data();
  work->R = xd[0];
  work->K = xd[1];
  work->tiles = pd[0];
  work->N = pd[0] * kTile;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // A few chunks per thread balance the load; each chunk is still a long contiguous stream.
  work->chunk = std::max<int64_t>(1, work->tiles / (4 * threads));
  work->num_chunks = (work->tiles + work->chunk - 1) / work->chunk;
  const int64_t helpers = std::min(threads, work->num_chunks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work->Run(); });
  work->Run();
  while (work->done.load(std::memory_order_acquire) < work->num_chunks) _mm_pause();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PardPackedDense, PackedDenseImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// 1 when this CPU runs the kernel (AVX2 and FMA), else 0.
extern "C" int PardPackedDenseSupported() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
