// Fused mixed-precision SGD and Adam loops: each element is loaded from its storage type,
// updated in float with the arithmetic of the float32 loops in optim_kernels.hpp, and
// stored rounded, in one pass. Included by convert_table.cpp inside its per-ISA
// namespace, after storage.hpp, lanes.hpp and simd_common.hpp. Template arguments: the storage of
// params, grads and state, stochastic rounding, a remainder (the param is the high half
// of a float32 master whose low half is remainder[i]), and the flags that change which
// arrays are touched (momentum, amsgrad) or cost a division (grad scaling). The other
// flags are loop-invariant selects.

// The arrays of one range as restrict-qualified locals (stores through them could
// otherwise alias the FusedArgs fields, which the loop would then reload every time).
template <class P, class G, class S>
struct Ranges {
  typename P::raw* __restrict p;
  std::uint16_t* __restrict rem;
  const typename G::raw* __restrict g;
  typename S::raw* __restrict s0;
  typename S::raw* __restrict s1;
  typename S::raw* __restrict s2;

  explicit Ranges(const FusedArgs& a)
      : p(static_cast<typename P::raw*>(a.param)), rem(a.remainder),
        g(static_cast<const typename G::raw*>(a.grad)),
        s0(static_cast<typename S::raw*>(a.state[0])),
        s1(static_cast<typename S::raw*>(a.state[1])),
        s2(static_cast<typename S::raw*>(a.state[2])) {}
};

// The param as float: with a remainder, the float32 master whose halves are p and rem.
template <class P, bool kRemainder, class Raw>
FUSEDOPS_ALWAYS_INLINE float load_param(const Raw* __restrict p, const std::uint16_t* __restrict rem,
                        std::size_t i) {
  if (kRemainder) return float_of(std::uint32_t(p[i]) << 16 | rem[i]);
  return P::load(p, i);
}

template <class P, bool kStochastic, bool kRemainder, class Raw>
FUSEDOPS_ALWAYS_INLINE void store_param(Raw* __restrict p, std::uint16_t* __restrict rem, std::size_t i,
                        float x, RoundingKey key, std::uint32_t index) {
  if (kRemainder) {
    const std::uint32_t u = bits_of(x);
    p[i] = Raw(u >> 16);
    rem[i] = std::uint16_t(u);
    return;
  }
  const std::uint32_t r = kStochastic && P::kRounds ? random_bits(key.k0, key.k1, index) : 0u;
  P::template store<kStochastic>(p, i, x, r);
}

template <class S, bool kStochastic, class Raw>
FUSEDOPS_ALWAYS_INLINE void store_state(Raw* __restrict s, std::size_t i, float x, RoundingKey key,
                        std::uint32_t index) {
  const std::uint32_t r = kStochastic && S::kRounds ? random_bits(key.k0, key.k1, index) : 0u;
  S::template store<kStochastic>(s, i, x, r);
}

// choose(mask, a, b): a where mask is all ones, b where it is zero. The flags that do not
// change which arrays a loop touches become such loop-invariant masks: an integer blend
// the vectorizer handles (a ?: on the flag itself keeps GCC from vectorizing the loop).
inline std::uint32_t mask_of(bool flag) { return flag ? 0xFFFFFFFFu : 0u; }
template <class V>
FUSEDOPS_ALWAYS_INLINE V choose(std::uint32_t mask, V a, V b) {
  return float_of((bits_of(a) & mask) | (bits_of(b) & ~mask));
}
#if FUSEDOPS_LANE_PAIRS
// On AVX2 lanes one blend instead of three bitwise operations (the broadcast mask is
// loop-invariant). Opaque to FMA contraction, as the bitwise select is.
FUSEDOPS_ALWAYS_INLINE RegFloats choose(std::uint32_t mask, RegFloats a, RegFloats b) {
  const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(int(mask)));
  return reinterpret_cast<RegFloats>(
      _mm256_blendv_ps(reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(a), m));
}
#endif

// The AMSGrad maximum: NaN on either side propagates.
FUSEDOPS_ALWAYS_INLINE float max_keeping_nan(float old, float v) { return (old >= v || old != old) ? old : v; }
FUSEDOPS_ALWAYS_INLINE RegFloats max_keeping_nan(RegFloats old, RegFloats v) {
  return ((old >= v) | (old != old)) ? old : v;
}

// The update of one element (V = float) or one register of elements (V = RegFloats):
// the same source, so the explicit lane loops, their padded tails and the
// auto-vectorized loops compute the same float math.
// The constants as V (lanes: broadcast once, so that the loop reads them from memory
// when registers run out instead of broadcasting them again).
template <class V>
struct SgdFloats {
  V lr, momentum, damp, wd, l1, divisor;
  std::uint32_t decay, use_l1, nesterov, first;
  explicit SgdFloats(const SgdConstants& c)
      : lr(V{} + float(c.lr)), momentum(V{} + float(c.momentum)),
        damp(V{} + float(c.one_minus_dampening)), wd(V{} + float(c.weight_decay)),
        l1(V{} + float(c.l1)), divisor(V{} + float(c.grad_divisor)),
        decay(mask_of(c.use_weight_decay)), use_l1(mask_of(c.use_l1)),
        nesterov(mask_of(c.nesterov)), first(mask_of(c.first_step)) {}
};

// kCoupled: weight decay or L1 added to the gradient (the masks then pick which); without
// either, the loop has no selects for them (they cost a fifth of the instructions).
template <bool kMomentum, bool kScaled, bool kCoupled, class V>
FUSEDOPS_ALWAYS_INLINE void sgd_update(const SgdFloats<V>& k, V& p, V g, V& buf) {
  V d = kScaled ? g / k.divisor : g;
  if (kCoupled) {
    d = choose(k.decay, d + k.wd * p, d);
    d = choose(k.use_l1, d + k.l1 * sign_of(p), d);
  }
  if (kMomentum) {
    buf = choose(k.first, d, k.momentum * buf + k.damp * d);
    d = choose(k.nesterov, d + k.momentum * buf, buf);
  }
  p = p - k.lr * d;
}

template <class V>
struct AdamFloats {
  V beta1, omb1, beta2, omb2, step_size, inv_sqrt_bc2, eps, wd, decay_factor, l1, divisor;
  // decay_factor with decoupled weight decay, 1 without it.
  V decoupled_factor;
  std::uint32_t decoupled, l2, use_l1;
  explicit AdamFloats(const AdamConstants& c)
      : beta1(V{} + float(c.beta1)), omb1(V{} + float(c.one_minus_beta1)),
        beta2(V{} + float(c.beta2)), omb2(V{} + float(c.one_minus_beta2)),
        step_size(V{} + float(c.step_size)), inv_sqrt_bc2(V{} + float(c.inv_sqrt_bc2)),
        eps(V{} + float(c.eps)), wd(V{} + float(c.weight_decay)),
        decay_factor(V{} + float(c.decay_factor)), l1(V{} + float(c.l1)),
        decoupled_factor(V{} + float(c.use_weight_decay && c.decoupled ? c.decay_factor : 1.0)),
        divisor(V{} + float(c.grad_divisor)),
        decoupled(mask_of(c.use_weight_decay && c.decoupled)),
        l2(mask_of(c.use_weight_decay && !c.decoupled)), use_l1(mask_of(c.use_l1)) {}
};

// kCoupled as in sgd_update (L2 weight decay or L1). Decoupled weight decay stays a
// select in the auto-vectorized loops: a plain multiply by 1 when off would be exact, but
// the compiler may then fuse it with the update into one FMA in some copies of the loop
// and not others, and a vector tail would round differently from the body (a sharded
// step, whose pieces start elsewhere, then stopped matching the unsharded one bitwise).
// The lane loops multiply by decoupled_factor (1 when off: exact) and keep the product
// out of contraction with an empty asm on its register: one instruction where the
// select took four.
template <bool kAmsgrad, bool kScaled, bool kCoupled, class V>
FUSEDOPS_ALWAYS_INLINE void adam_update(const AdamFloats<V>& k, V& p, V g, V& m, V& v, V& vmax) {
  V d = kScaled ? g / k.divisor : g;
  if constexpr (std::is_same_v<V, float>) {
    p = choose(k.decoupled, p * k.decay_factor, p);
  } else {
    p = p * k.decoupled_factor;
    asm("" : "+x"(p));
  }
  if (kCoupled) {
    d = choose(k.l2, d + k.wd * p, d);
    d = choose(k.use_l1, d + k.l1 * sign_of(p), d);
  }
  m = k.beta1 * m + k.omb1 * d;
  // (1 - beta2) * d first, as torch: d * d alone overflows float32 for |d| > 1.8e19.
  v = k.beta2 * v + (k.omb2 * d) * d;
  V second = v;
  if (kAmsgrad) {
    second = max_keeping_nan(vmax, v);
    vmax = second;
  }
  const V denom = sqrt_of(second) * k.inv_sqrt_bc2 + k.eps;
  p = p - k.step_size * (m / denom);
}

// ---- Element loops, vectorized by the compiler: every row (float16 storage included).

template <class P, class G, class S, bool kRemainder, bool kStochastic, bool kMomentum,
          bool kScaled, bool kCoupled>
void sgd_fused_loop(const SgdConstants& c, const FusedArgs& a, std::size_t n) {
  const SgdFloats<float> k(c);
  const Ranges<P, G, S> r(a);
  const RoundingKey kp = a.keys[0], kb = a.keys[1];
  const std::uint32_t base = a.first;
  const std::uint32_t count = std::uint32_t(n);  // ranges are at most a chunk long
  for (std::uint32_t i = 0; i < count; ++i) {
    float pi = load_param<P, kRemainder>(r.p, r.rem, i);
    float b = kMomentum ? S::load(r.s0, i) : 0.0f;
    sgd_update<kMomentum, kScaled, kCoupled>(k, pi, G::load(r.g, i), b);
    if (kMomentum) store_state<S, kStochastic>(r.s0, i, b, kb, base + i);
    store_param<P, kStochastic, kRemainder>(r.p, r.rem, i, pi, kp, base + i);
  }
}

template <class P, class G, class S, bool kRemainder, bool kStochastic, bool kAmsgrad,
          bool kScaled, bool kCoupled>
void adam_fused_loop(const AdamConstants& c, const FusedArgs& a, std::size_t n) {
  const AdamFloats<float> k(c);
  const Ranges<P, G, S> r(a);
  const RoundingKey kp = a.keys[0], km = a.keys[1], kv = a.keys[2], kx = a.keys[3];
  const std::uint32_t base = a.first;
  const std::uint32_t count = std::uint32_t(n);  // ranges are at most a chunk long
  for (std::uint32_t i = 0; i < count; ++i) {
    float pi = load_param<P, kRemainder>(r.p, r.rem, i);
    float mi = S::load(r.s0, i), vi = S::load(r.s1, i);
    float xi = kAmsgrad ? S::load(r.s2, i) : 0.0f;
    adam_update<kAmsgrad, kScaled, kCoupled>(k, pi, G::load(r.g, i), mi, vi, xi);
    store_state<S, kStochastic>(r.s0, i, mi, km, base + i);
    store_state<S, kStochastic>(r.s1, i, vi, kv, base + i);
    if (kAmsgrad) store_state<S, kStochastic>(r.s2, i, xi, kx, base + i);
    store_param<P, kStochastic, kRemainder>(r.p, r.rem, i, pi, kp, base + i);
  }
}

// ---- Lane loops (lanes.hpp): rows whose operands are all float32 or bfloat16. A step
// takes kStepRegs registers (AVX2: two, lanes.hpp), as a Block. The last partial step
// runs the same code on a zero-padded copy, so every element gets the same arithmetic
// wherever a range starts.

constexpr std::size_t kStepLanes = kStepRegs * kRegLanes;

struct Block {
  RegFloats r[kStepRegs];
};
struct BlockBits {
  RegBits r[kStepRegs];
};

#if FUSEDOPS_LANE_PAIRS
// The 16 values at high (with those at low in the low halves, if given) as a Block in
// the in-lane order.
template <class... Low>
FUSEDOPS_ALWAYS_INLINE Block load_block_inlane(const std::uint16_t* high, const Low*... low) {
  RegBits a, b;
  load_halves2_inlane(high, low..., a, b);
  return Block{{float_of(a), float_of(b)}};
}
#endif

// The lanes of a step in the in-lane order of lanes.hpp (pairs whose operands are all
// 16-bit) or in the order of memory.
template <class P, class G, class S>
constexpr bool kInLane = FUSEDOPS_LANE_PAIRS && !std::is_same_v<P, Float32Storage> &&
                         !std::is_same_v<G, Float32Storage> && !std::is_same_v<S, Float32Storage>;

// Element offsets (from `first`) of the lanes of a step.
template <bool kOrder>
FUSEDOPS_ALWAYS_INLINE BlockBits step_indices(std::uint32_t first) {
  BlockBits index;
#if FUSEDOPS_LANE_PAIRS
  pair_order<kOrder>(first, index.r[0], index.r[1]);
#else
  index.r[0] = lane_indices(first);
#endif
  return index;
}

template <class S>
struct LaneIo;

template <>
struct LaneIo<Float32Storage> {
  template <bool kOrder>
  FUSEDOPS_ALWAYS_INLINE static Block load(const float* p) {
    static_assert(!kOrder, "float32 operands keep the order of memory");
    Block x;
    for (std::size_t j = 0; j < kStepRegs; ++j) x.r[j] = load_floats(p + j * kRegLanes);
    return x;
  }
  template <bool kOrder, bool kStochastic, bool kMayBeNan = true>
  FUSEDOPS_ALWAYS_INLINE static void store(float* p, const Block& x, const BlockBits&) {
    for (std::size_t j = 0; j < kStepRegs; ++j) store_floats(p + j * kRegLanes, x.r[j]);
  }
};

template <>
struct LaneIo<Bfloat16Storage> {
  template <bool kOrder>
  FUSEDOPS_ALWAYS_INLINE static Block load(const std::uint16_t* p) {
#if FUSEDOPS_LANE_PAIRS
    if constexpr (kOrder) return load_block_inlane(p);
#endif
    Block x;
    for (std::size_t j = 0; j < kStepRegs; ++j) x.r[j] = float_of(load_halves(p + j * kRegLanes) << 16);
    return x;
  }
  template <bool kOrder, bool kStochastic, bool kMayBeNan = true>
  FUSEDOPS_ALWAYS_INLINE static void store(std::uint16_t* p, const Block& x, const BlockBits& random) {
#if FUSEDOPS_LANE_PAIRS
    store_bf16_pair<kOrder, kStochastic, kMayBeNan>(p, x.r[0], x.r[1], random.r[0],
                                                    random.r[1]);
#else
    store_bf16_lanes<kStochastic>(p, x.r[0], random.r[0]);
#endif
  }
};

template <class T>
constexpr bool kHasLanes = std::is_same_v<T, Float32Storage> || std::is_same_v<T, Bfloat16Storage>;

template <class P, class G, class S>
constexpr bool kLaneRow = kHasLanes<P> && kHasLanes<G> && kHasLanes<S>;

template <class P, bool kRemainder, bool kOrder, class Raw>
FUSEDOPS_ALWAYS_INLINE Block load_param_lanes(const Raw* p, const std::uint16_t* rem) {
  if constexpr (kRemainder) {
#if FUSEDOPS_LANE_PAIRS
    if constexpr (kOrder) return load_block_inlane(p, rem);
#endif
    Block x;
    for (std::size_t j = 0; j < kStepRegs; ++j) {
      const std::size_t o = j * kRegLanes;
      x.r[j] = float_of(load_halves(p + o) << 16 | load_halves(rem + o));
    }
    return x;
  } else {
    return LaneIo<P>::template load<kOrder>(p);
  }
}

template <class S, bool kStochastic>
FUSEDOPS_ALWAYS_INLINE BlockBits block_random(RoundingKey key, const BlockBits& index) {
  BlockBits r{};
  if (kStochastic && S::kRounds) {
    for (std::size_t j = 0; j < kStepRegs; ++j) r.r[j] = random_bits(key.k0, key.k1, index.r[j]);
  }
  return r;
}

template <class P, bool kStochastic, bool kRemainder, bool kOrder, bool kMayBeNan = true,
          class Raw>
FUSEDOPS_ALWAYS_INLINE void store_param_lanes(Raw* p, std::uint16_t* rem, const Block& x, RoundingKey key,
                                              const BlockBits& index) {
  if constexpr (kRemainder) {
#if FUSEDOPS_LANE_PAIRS
    const RegBits u0 = bits_of(x.r[0]), u1 = bits_of(x.r[1]);
    store_halves2<kOrder>(p, u0 >> 16, u1 >> 16);
    store_halves2<kOrder>(rem, u0 & 0xFFFFu, u1 & 0xFFFFu);
#else
    const RegBits u = bits_of(x.r[0]);
    store_high_halves(p, u);
    store_halves(rem, u & 0xFFFFu);
#endif
  } else {
    LaneIo<P>::template store<kOrder, kStochastic, kMayBeNan>(
        p, x, block_random<P, kStochastic>(key, index));
  }
}

template <class S, bool kStochastic, bool kOrder, bool kMayBeNan = true, class Raw>
FUSEDOPS_ALWAYS_INLINE void store_state_lanes(Raw* s, const Block& x, RoundingKey key,
                                              const BlockBits& index) {
  LaneIo<S>::template store<kOrder, kStochastic, kMayBeNan>(
      s, x, block_random<S, kStochastic>(key, index));
}

// The lanes of a step's block x (of an operand stored as S) that are NaN: on AVX2 one
// compare per two registers for bfloat16 storage; zero for float32 storage (stored as
// they are) and the other ISAs.
template <class S>
FUSEDOPS_ALWAYS_INLINE RegBits nan_lanes_of(const Block& x) {
#if FUSEDOPS_LANE_PAIRS
  if constexpr (std::is_same_v<S, Bfloat16Storage>) return nan_lanes(x.r[0], x.r[1]);
#endif
  (void)x;
  return RegBits{};
}

// Runs store(std::bool_constant<kMayBeNan>) for a step: on AVX2, when it rounds some
// operand to bfloat16 (kRounds) and nan() (nan_lanes_of its rounded blocks) has no lane
// set, with kMayBeNan false, the NaN selects left out (one compare per two registers and
// one test per step, where the select of each rounded register takes three
// instructions). Measured with the lane loops below. The select matters for NaNs whose
// low 16 bits carry into the exponent (payloads from float32 operands: stored without
// it, they would come out as -0 or Inf); tests/test_bf16_lanes.py feeds such NaNs.
template <bool kRounds, class Nan, class Store>
FUSEDOPS_ALWAYS_INLINE void store_step(const Nan& nan, const Store& store) {
#if FUSEDOPS_LANE_PAIRS
  if constexpr (kRounds) {
    if (__builtin_expect(!any_lane(nan()), 1)) {
      store(std::false_type{});
      return;
    }
  }
#endif
  (void)nan;
  store(std::true_type{});
}

// Runs step(ranges, i, index) on every whole step of the range (kStepLanes elements from
// element i; index: the element offsets of its lanes), then step(padded, 0, index) on
// zero-padded copies of the rest (null operands stay null; step touches only the
// operands its flags use).
template <bool kOrder, class P, class G, class S, class Step>
inline void for_lanes(const Ranges<P, G, S>& r, std::uint32_t first, std::size_t n,
                      const Step& step) {
  const BlockBits lanes = step_indices<kOrder>(first);
  const auto at = [&lanes](std::size_t i) {
    BlockBits index;
    for (std::size_t j = 0; j < kStepRegs; ++j) index.r[j] = lanes.r[j] + std::uint32_t(i);
    return index;
  };
  std::size_t i = 0;
  for (; i + kStepLanes <= n; i += kStepLanes) step(r, i, at(i));
  if (i == n) return;
  const std::size_t rest = n - i;
  alignas(64) typename P::raw p[kStepLanes] = {};
  alignas(64) std::uint16_t rem[kStepLanes] = {};
  alignas(64) typename G::raw g[kStepLanes] = {};
  alignas(64) typename S::raw s[3][kStepLanes] = {};
  Ranges<P, G, S> padded = r;
  const auto in = [rest, i](auto& operand, auto* copy) {
    if (operand == nullptr) return;
    __builtin_memcpy(copy, operand + i, rest * sizeof *copy);
    operand = copy;
  };
  in(padded.p, p);
  in(padded.rem, rem);
  in(padded.g, g);
  in(padded.s0, s[0]);
  in(padded.s1, s[1]);
  in(padded.s2, s[2]);
  step(padded, 0, at(i));
  const auto out = [rest, i](auto* operand, const auto* copy) {
    if (operand != nullptr) __builtin_memcpy(operand + i, copy, rest * sizeof *copy);
  };
  out(r.p, p);
  out(r.rem, rem);
  out(r.s0, s[0]);
  out(r.s1, s[1]);
  out(r.s2, s[2]);
}

// The lane loops request each operand's lines kLanePrefetchBytes ahead of their reads.
// One core's reads from memory are bound by the lines it has in flight, and the update's
// arithmetic (Adam's square root and division; the bfloat16 conversions) fills the
// out-of-order window before the loads of lines far enough ahead issue. Measured on the
// Xeon, 2 threads, 128M elements: all-bfloat16 Adam 0.343 -> 0.303 ns/el (1 KiB best of
// 0.5, 1 and 2 KiB), all-bfloat16 SGD with momentum 0.29 -> 0.25; the flows with float32
// state or masters unchanged.
constexpr std::size_t kLanePrefetchBytes = 1024;

template <class Raw>
FUSEDOPS_ALWAYS_INLINE void prefetch_operand(const Raw* p) {
  __builtin_prefetch(reinterpret_cast<const char*>(p) + kLanePrefetchBytes);
}

// Prefetches for element i of the operands a loop reads: the param (and remainder), the
// grad and the first kStates state arrays.
template <bool kRemainder, std::size_t kStates, class P, class G, class S>
FUSEDOPS_ALWAYS_INLINE void prefetch_operands(const Ranges<P, G, S>& r, std::size_t i) {
  prefetch_operand(r.p + i);
  if (kRemainder) prefetch_operand(r.rem + i);
  prefetch_operand(r.g + i);
  if (kStates > 0) prefetch_operand(r.s0 + i);
  if (kStates > 1) prefetch_operand(r.s1 + i);
  if (kStates > 2) prefetch_operand(r.s2 + i);
}

// The lane loops' step lambdas are forced inline (FUSEDOPS_LAMBDA_INLINE): left to GCC,
// 39 of them were called per step. With that, the NaN test of store_step, the blend of
// choose() and the decoupled-decay multiply of adam_update: AMD EPYC (Zen 3, AVX2,
// 3.2 GHz), the loops called directly, one thread, 2048 elements in L1, same bits:
// Adam all-bfloat16 0.81 -> 0.68 ns/el (20.6 -> 17.3 cycles per 8 values; its square
// root and division alone take 8.4), float32 params with bfloat16 state 0.73 -> 0.61,
// remainder with bfloat16 state 0.69 -> 0.63, bfloat16 params with float32 state 0.55
// (unchanged); SGD with momentum all-bfloat16 0.42-0.45 -> 0.34, bfloat16 params with
// float32 buffer 0.37 -> 0.32. Through the API, one thread, 65,536 elements: 0.79-0.93x.
// From memory (16M elements, 2 threads) unchanged within the noise: there the page
// placement of the arrays moves the figures by up to 1.3x between allocations.
template <class P, class G, class S, bool kRemainder, bool kStochastic, bool kMomentum,
          bool kScaled, bool kCoupled>
void sgd_lanes_loop(const SgdConstants& c, const FusedArgs& a, std::size_t n) {
  constexpr bool kOrder = kInLane<P, G, S>;
  const SgdFloats<RegFloats> k(c);
  const RoundingKey kp = a.keys[0], kb = a.keys[1];
  const auto step = [&](const Ranges<P, G, S>& r, std::size_t i,
                        const BlockBits& index) FUSEDOPS_LAMBDA_INLINE {
    auto* rem = kRemainder ? r.rem + i : nullptr;
    prefetch_operands<kRemainder, kMomentum ? 1 : 0>(r, i);
    Block p = load_param_lanes<P, kRemainder, kOrder>(r.p + i, rem);
    Block b{};
    if (kMomentum) b = LaneIo<S>::template load<kOrder>(r.s0 + i);
    const Block g = LaneIo<G>::template load<kOrder>(r.g + i);
    for (std::size_t j = 0; j < kStepRegs; ++j) {
      sgd_update<kMomentum, kScaled, kCoupled>(k, p.r[j], g.r[j], b.r[j]);
    }
    using PS = std::conditional_t<kRemainder, Float32Storage, P>;  // how p is rounded
    using BS = std::conditional_t<kMomentum, S, Float32Storage>;
    constexpr bool kRounds = PS::kRounds || BS::kRounds;
    const auto nan = [&]() FUSEDOPS_LAMBDA_INLINE {
      return nan_lanes_of<PS>(p) | nan_lanes_of<BS>(b);
    };
    store_step<kRounds>(nan, [&](auto may_be_nan) FUSEDOPS_LAMBDA_INLINE {
      constexpr bool kNan = decltype(may_be_nan)::value;
      if (kMomentum) store_state_lanes<S, kStochastic, kOrder, kNan>(r.s0 + i, b, kb, index);
      store_param_lanes<P, kStochastic, kRemainder, kOrder, kNan>(r.p + i, rem, p, kp, index);
    });
  };
  for_lanes<kOrder>(Ranges<P, G, S>(a), a.first, n, step);
}

template <class P, class G, class S, bool kRemainder, bool kStochastic, bool kAmsgrad,
          bool kScaled, bool kCoupled>
void adam_lanes_loop(const AdamConstants& c, const FusedArgs& a, std::size_t n) {
  constexpr bool kOrder = kInLane<P, G, S>;
  const AdamFloats<RegFloats> k(c);
  const RoundingKey kp = a.keys[0], km = a.keys[1], kv = a.keys[2], kx = a.keys[3];
  const auto step = [&](const Ranges<P, G, S>& r, std::size_t i,
                        const BlockBits& index) FUSEDOPS_LAMBDA_INLINE {
    auto* rem = kRemainder ? r.rem + i : nullptr;
    prefetch_operands<kRemainder, kAmsgrad ? 3 : 2>(r, i);
    Block p = load_param_lanes<P, kRemainder, kOrder>(r.p + i, rem);
    Block m = LaneIo<S>::template load<kOrder>(r.s0 + i);
    Block v = LaneIo<S>::template load<kOrder>(r.s1 + i);
    Block x{};
    if (kAmsgrad) x = LaneIo<S>::template load<kOrder>(r.s2 + i);
    const Block g = LaneIo<G>::template load<kOrder>(r.g + i);
    for (std::size_t j = 0; j < kStepRegs; ++j) {
      adam_update<kAmsgrad, kScaled, kCoupled>(k, p.r[j], g.r[j], m.r[j], v.r[j], x.r[j]);
    }
    using PS = std::conditional_t<kRemainder, Float32Storage, P>;  // how p is rounded
    using XS = std::conditional_t<kAmsgrad, S, Float32Storage>;
    constexpr bool kRounds = PS::kRounds || S::kRounds;
    const auto nan = [&]() FUSEDOPS_LAMBDA_INLINE {
      return nan_lanes_of<PS>(p) | nan_lanes_of<S>(m) | nan_lanes_of<S>(v) |
             nan_lanes_of<XS>(x);
    };
    store_step<kRounds>(nan, [&](auto may_be_nan) FUSEDOPS_LAMBDA_INLINE {
      constexpr bool kNan = decltype(may_be_nan)::value;
      store_state_lanes<S, kStochastic, kOrder, kNan>(r.s0 + i, m, km, index);
      store_state_lanes<S, kStochastic, kOrder, kNan>(r.s1 + i, v, kv, index);
      if (kAmsgrad) store_state_lanes<S, kStochastic, kOrder, kNan>(r.s2 + i, x, kx, index);
      store_param_lanes<P, kStochastic, kRemainder, kOrder, kNan>(r.p + i, rem, p, kp, index);
    });
  };
  for_lanes<kOrder>(Ranges<P, G, S>(a), a.first, n, step);
}

template <class P, class G, class S, bool kRemainder>
void sgd_fused(const SgdConstants& c, const FusedArgs& a, std::size_t n) {
  with_flags(
      [&](auto stochastic, auto momentum, auto scaled, auto coupled) {
        if constexpr (kLaneRow<P, G, S>) {
          sgd_lanes_loop<P, G, S, kRemainder, stochastic, momentum, scaled, coupled>(c, a, n);
        } else {
          sgd_fused_loop<P, G, S, kRemainder, stochastic, momentum, scaled, coupled>(c, a, n);
        }
      },
      a.stochastic, c.use_momentum, c.scaled, c.use_weight_decay || c.use_l1);
}

template <class P, class G, class S, bool kRemainder>
void adam_fused(const AdamConstants& c, const FusedArgs& a, std::size_t n) {
  with_flags(
      [&](auto stochastic, auto amsgrad, auto scaled, auto coupled) {
        if constexpr (kLaneRow<P, G, S>) {
          adam_lanes_loop<P, G, S, kRemainder, stochastic, amsgrad, scaled, coupled>(c, a, n);
        } else {
          adam_fused_loop<P, G, S, kRemainder, stochastic, amsgrad, scaled, coupled>(c, a, n);
        }
      },
      a.stochastic, c.amsgrad, c.scaled,
      c.use_l1 || (c.use_weight_decay && !c.decoupled));
}

constexpr FusedKernels fused_table() {
  using F32 = Float32Storage;
  using B16 = Bfloat16Storage;
  using H16 = Float16Storage;
  FusedKernels k{};
  const auto set = [&k](FusedRow row, auto sgd, auto adam) {
    k.sgd[int(row)] = sgd;
    k.adam[int(row)] = adam;
  };
  set(FusedRow::f32_f32_bf16, &sgd_fused<F32, F32, B16, false>, &adam_fused<F32, F32, B16, false>);
  set(FusedRow::f32_bf16_bf16, &sgd_fused<F32, B16, B16, false>, &adam_fused<F32, B16, B16, false>);
  set(FusedRow::f32_f16_bf16, &sgd_fused<F32, H16, B16, false>, &adam_fused<F32, H16, B16, false>);
  set(FusedRow::bf16_bf16_f32, &sgd_fused<B16, B16, F32, false>, &adam_fused<B16, B16, F32, false>);
  set(FusedRow::bf16_bf16_bf16, &sgd_fused<B16, B16, B16, false>, &adam_fused<B16, B16, B16, false>);
  set(FusedRow::f16_f16_f32, &sgd_fused<H16, H16, F32, false>, &adam_fused<H16, H16, F32, false>);
  set(FusedRow::split_bf16_bf16, &sgd_fused<B16, B16, B16, true>, &adam_fused<B16, B16, B16, true>);
  set(FusedRow::f32_bf16_f32, &sgd_fused<F32, B16, F32, false>, &adam_fused<F32, B16, F32, false>);
  set(FusedRow::split_bf16_f32, &sgd_fused<B16, B16, F32, true>, &adam_fused<B16, B16, F32, true>);
  return k;
}
