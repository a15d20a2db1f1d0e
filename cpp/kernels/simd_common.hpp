// Helpers shared by the kernel loops. Included only inside the per-ISA namespace of
// cpp/kernels/isa_table.cpp, so every function here gets internal linkage per ISA
// (no std:: inline function is used in a loop: a weak symbol compiled with AVX-512
// could otherwise be picked by the linker for the scalar path).
#pragma once

inline float sqrt_of(float x) { return __builtin_sqrtf(x); }
inline double sqrt_of(double x) { return __builtin_sqrt(x); }

inline float abs_of(float x) { return __builtin_fabsf(x); }
inline double abs_of(double x) { return __builtin_fabs(x); }

// sign(x) as torch.sign: -1, +1, and x itself for +-0 and NaN. Written as one select on
// one compare (|x| > 0: false for zeros and NaN) of copysign(1, x): GCC if-converts and
// vectorizes that for SSE2/AVX2 too. An arithmetic sign selected on (x > 0 || x < 0)
// left some instantiations on branches in the AVX2 build (SGD and Adam with l1, Lion
// with weight decay: scalar speed); nested selects only vectorized with AVX-512 masks.
inline float copysign_of(float x, float sign) { return __builtin_copysignf(x, sign); }
inline double copysign_of(double x, double sign) { return __builtin_copysign(x, sign); }

template <class T>
inline T sign_of(T x) {
  return abs_of(x) > T(0) ? copysign_of(T(1), x) : x;
}

// Turns runtime flags into template arguments: with_flags(f, b0, b1, ...) invokes
// f(std::bool_constant<b0>{}, std::bool_constant<b1>{}, ...), so each flag combination
// gets a branch-free inner loop.
template <class F>
inline void with_flags_impl(F&& f) { f(); }

template <class F, class... Flags>
inline void with_flags_impl(F&& f, bool first, Flags... rest) {
  if (first) {
    with_flags_impl([&](auto... fixed) { f(std::true_type{}, fixed...); }, rest...);
  } else {
    with_flags_impl([&](auto... fixed) { f(std::false_type{}, fixed...); }, rest...);
  }
}

template <class F, class... Flags>
inline void with_flags(F&& f, Flags... flags) { with_flags_impl(f, flags...); }

// with_flags for one flag that only changes the code when kMatters: otherwise only
// f(false) is instantiated and called (a second copy of the same loop would only grow the
// caller: on an Intel Xeon, Emerald Rapids, the AVX-512 bfloat16 batch-norm forward over
// NCHW (64, 256, 28, 28) and (32, 64, 56, 56) measured 1.04-1.14x slower with one, 2
// threads, in-process A/B, four runs; the backward within 1-3% either way).
template <bool kMatters, class F>
inline void with_flag_if(F&& f, bool flag) {
  if constexpr (kMatters) {
    with_flags(f, flag);
  } else {
    f(std::false_type{});
  }
}

// Writes n values to dst: fill(out, begin, count) computes values [begin, begin + count)
// into out[0, count), and is called for consecutive ranges in increasing order. With
// kStream, whole 16-byte-aligned tiles (of kTileBytes: kStreamTileBytes unless the caller
// picks its own) are computed into an L1 buffer and written with non-temporal stores: a
// large output then costs its bytes once (no read-for-ownership of the destination
// lines) and does not evict the inputs from the cache; the values before dst's first
// 16-byte boundary and after the last whole granule take masked non-temporal stores
// (stream_granule_part). Each thread
// calls stream_fence() after its streaming writes (once per batch of work: a fence costs
// about as much as a short kernel call).
constexpr std::size_t kStreamTileBytes = 256;
// The non-temporal stores: a register of the ISA each, a whole line with AVX-512 (16-byte
// stores up to the first address aligned for them). (Measured on the Xeon against 16-byte
// stores: bfloat16 normalize from the L2 to memory, 1 thread, 0.137 -> 0.108 ns/el;
// the cache-blocked bfloat16 NCHW forward and backward, 2 threads, 0.34-0.38 -> 0.31-0.32
// ns/el.)
#if defined(__AVX512F__)
constexpr std::size_t kStreamStoreBytes = 64;
#elif defined(__AVX__)
constexpr std::size_t kStreamStoreBytes = 32;
#else
constexpr std::size_t kStreamStoreBytes = 16;
#endif

// Rows shorter than this many values are written from their first value on.
constexpr std::size_t kAlignedWriteMin = 64;

#if defined(__SSE2__)
// Stores the `bytes` bytes at src non-temporally at dst, where they lie within one 16-byte
// granule: a masked non-temporal store of the granule (maskmovdqu), which writes those
// bytes only. The edges of a streamed run that does not start or end on a granule: the
// granule's other bytes belong to the neighbouring run, which streams them too. (Written
// with plain stores instead, a line that both kinds of store write, apart, measured the
// slowest thing the streamed passes did. AMD EPYC Zen 4, 2 threads, in-process A/B, same
// bits, batch norm forward / backward from memory: float32 (8192, 1001) 0.68-0.75x /
// 0.87-0.88x the time, bfloat16 (8192, 1003) 0.52-0.53x / 0.75-0.76x, NHWC float32 (32,
// 56, 56, 65) 0.50-0.51x / 0.68-0.69x; rows of whole granules, (8192, 1000), NHWC (32, 56,
// 56, 64) and NCHW (64, 256, 28, 28), unchanged: they take no edges.)
inline void stream_granule_part(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(dst);
  const std::size_t offset = at % 16;
  alignas(16) unsigned char data[16] = {};
  alignas(16) unsigned char mask[16] = {};
  __builtin_memcpy(data + offset, src, bytes);
  for (std::size_t k = offset; k < offset + bytes; ++k) mask[k] = 0x80;
  _mm_maskmoveu_si128(_mm_load_si128(reinterpret_cast<const __m128i*>(data)),
                      _mm_load_si128(reinterpret_cast<const __m128i*>(mask)),
                      reinterpret_cast<char*>(at - offset));
}
#endif

template <bool kStream, std::size_t kTileBytes = kStreamTileBytes, class T, class Fill>
inline void write_blocks(T* __restrict dst, std::size_t n, const Fill& fill,
                         const T* anchor = nullptr) {
  static_assert(kTileBytes % 64 == 0, "tiles of whole cache lines");
  std::size_t i = 0;
#if defined(__SSE2__)
  if (kStream) {
    constexpr std::size_t tile = kTileBytes / sizeof(T);
    constexpr std::size_t granule = 16 / sizeof(T);
    std::size_t head = (16 - reinterpret_cast<std::uintptr_t>(dst) % 16) % 16 / sizeof(T);
    if (head > n) head = n;
    alignas(64) T buffer[tile];
    if (head > 0) {  // up to dst's first granule boundary
      fill(buffer, 0, head);
      stream_granule_part(dst, buffer, head * sizeof(T));
    }
    i = head;
    // The first tile ends at a cache-line boundary of dst, so every later tile writes
    // whole lines. (Tiles from dst's start, with dst 16 bytes past a line as NumPy places
    // large arrays, wrote each line in two pieces from two tiles: four partial-line
    // stores per tile.)
    std::size_t first = (64 - reinterpret_cast<std::uintptr_t>(dst + i) % 64) % 64 / sizeof(T);
    if (first == 0 || first > n - i) first = tile;
    while (i + granule <= n) {
      // A whole tile (the first up to a line boundary), or the last whole 16-byte
      // granules (a partial tile).
      const std::size_t want = first;
      first = tile;
      const std::size_t count = i + want <= n ? want : (n - i) / granule * granule;
      fill(buffer, i, count);
      char* out = reinterpret_cast<char*>(dst + i);
      const char* in = reinterpret_cast<const char*>(buffer);
      const std::size_t bytes = count * sizeof(T);
      std::size_t b = 0;
#if defined(__AVX__)
      for (; b < bytes && reinterpret_cast<std::uintptr_t>(out + b) % kStreamStoreBytes != 0;
           b += 16) {
        _mm_stream_si128(reinterpret_cast<__m128i*>(out + b),
                         _mm_load_si128(reinterpret_cast<const __m128i*>(in + b)));
      }
      for (; b + kStreamStoreBytes <= bytes; b += kStreamStoreBytes) {
#if defined(__AVX512F__)
        _mm512_stream_si512(reinterpret_cast<__m512i*>(out + b), _mm512_loadu_si512(in + b));
#else
        _mm256_stream_si256(reinterpret_cast<__m256i*>(out + b),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + b)));
#endif
      }
#endif
      for (; b < bytes; b += 16) {
        _mm_stream_si128(reinterpret_cast<__m128i*>(out + b),
                         _mm_load_si128(reinterpret_cast<const __m128i*>(in + b)));
      }
      i += count;
    }
    if (i < n) {  // the values after the last whole granule
      fill(buffer, i, n - i);
      stream_granule_part(dst + i, buffer, (n - i) * sizeof(T));
    }
    return;
  }
#endif
  if (!kStream && n >= kAlignedWriteMin) {
    // The values up to the first cache-line boundary of `anchor` (an array read or
    // written beside dst, value for value; dst itself by default) first, so the vector
    // loop's accesses to it do not straddle lines (an access that does costs two; in L1
    // and L2 a forward's elementwise pass writing to misaligned rows measured 20-25%
    // slower).
    const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(anchor ? anchor : dst) % 64;
    const std::size_t head = at % sizeof(T) == 0 ? (64 - at) % 64 / sizeof(T) : 0;
    if (head > 0) fill(dst, 0, head);
    i = head;
  }
  if (i < n) fill(dst + i, i, n - i);
}

// dst[i] = value(i) for i < n, written as write_blocks writes.
template <bool kStream, class T, class Value>
inline void write_values(T* __restrict dst, std::size_t n, const Value& value,
                         const T* anchor = nullptr) {
  write_blocks<kStream>(dst, n, [&value](T* __restrict out, std::size_t begin, std::size_t count) {
    for (std::size_t j = 0; j < count; ++j) out[j] = value(begin + j);
  }, anchor);
}

// Orders the non-temporal stores before anything the thread does next.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}
