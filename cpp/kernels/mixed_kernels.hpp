// Fused mixed-precision SGD and Adam loops: each element is loaded from its storage type,
// updated in float with the arithmetic of the float32 loops in optim_kernels.hpp, and
// stored rounded, in one pass. Included by convert_table.cpp inside its per-ISA
// namespace, after storage.hpp and simd_common.hpp. Template arguments: the storage of
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
inline float load_param(const Raw* __restrict p, const std::uint16_t* __restrict rem,
                        std::size_t i) {
  if (kRemainder) return float_of(std::uint32_t(p[i]) << 16 | rem[i]);
  return P::load(p, i);
}

template <class P, bool kStochastic, bool kRemainder, class Raw>
inline void store_param(Raw* __restrict p, std::uint16_t* __restrict rem, std::size_t i,
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
inline void store_state(Raw* __restrict s, std::size_t i, float x, RoundingKey key,
                        std::uint32_t index) {
  const std::uint32_t r = kStochastic && S::kRounds ? random_bits(key.k0, key.k1, index) : 0u;
  S::template store<kStochastic>(s, i, x, r);
}

// choose(mask, a, b): a where mask is all ones, b where it is zero. The flags that do not
// change which arrays a loop touches become such loop-invariant masks: an integer blend
// the vectorizer handles (a ?: on the flag itself keeps GCC from vectorizing the loop).
inline std::uint32_t mask_of(bool flag) { return flag ? 0xFFFFFFFFu : 0u; }
inline float choose(std::uint32_t mask, float a, float b) {
  return float_of((bits_of(a) & mask) | (bits_of(b) & ~mask));
}

// kCoupled: weight decay or L1 added to the gradient (the masks then pick which); without
// either, the loop has no selects for them (they cost a fifth of the instructions).
template <class P, class G, class S, bool kRemainder, bool kStochastic, bool kMomentum,
          bool kScaled, bool kCoupled>
void sgd_fused_loop(const SgdConstants& c, const FusedArgs& a, std::size_t n) {
  const float lr = float(c.lr), momentum = float(c.momentum), damp = float(c.one_minus_dampening);
  const float wd = float(c.weight_decay), l1 = float(c.l1), divisor = float(c.grad_divisor);
  const std::uint32_t decay = mask_of(c.use_weight_decay), use_l1 = mask_of(c.use_l1);
  const std::uint32_t nesterov = mask_of(c.nesterov), first = mask_of(c.first_step);
  const Ranges<P, G, S> r(a);
  const RoundingKey kp = a.keys[0], kb = a.keys[1];
  const std::uint32_t base = a.first;
  const std::uint32_t count = std::uint32_t(n);  // ranges are at most a chunk long
  for (std::uint32_t i = 0; i < count; ++i) {
    const float pi = load_param<P, kRemainder>(r.p, r.rem, i);
    const float gi = G::load(r.g, i);
    float d = kScaled ? gi / divisor : gi;
    if (kCoupled) {
      d = choose(decay, d + wd * pi, d);
      d = choose(use_l1, d + l1 * sign_of(pi), d);
    }
    if (kMomentum) {
      const float b = choose(first, d, momentum * S::load(r.s0, i) + damp * d);
      store_state<S, kStochastic>(r.s0, i, b, kb, base + i);
      d = choose(nesterov, d + momentum * b, b);
    }
    store_param<P, kStochastic, kRemainder>(r.p, r.rem, i, pi - lr * d, kp, base + i);
  }
}

// kCoupled as in sgd_fused_loop (L2 weight decay or L1). Decoupled weight decay stays a
// select: a plain multiply by 1 when off would be exact, but the compiler may then fuse
// it with the update into one FMA in some copies of the loop and not others, and a
// vector tail would round differently from the body (a sharded step, whose pieces
// start elsewhere, then stopped matching the unsharded one bitwise).
template <class P, class G, class S, bool kRemainder, bool kStochastic, bool kAmsgrad,
          bool kScaled, bool kCoupled>
void adam_fused_loop(const AdamConstants& c, const FusedArgs& a, std::size_t n) {
  const float beta1 = float(c.beta1), omb1 = float(c.one_minus_beta1);
  const float beta2 = float(c.beta2), omb2 = float(c.one_minus_beta2);
  const float step_size = float(c.step_size), inv_sqrt_bc2 = float(c.inv_sqrt_bc2);
  const float eps = float(c.eps), wd = float(c.weight_decay), decay_factor = float(c.decay_factor);
  const float l1 = float(c.l1), divisor = float(c.grad_divisor);
  const std::uint32_t decoupled = mask_of(c.use_weight_decay && c.decoupled);
  const std::uint32_t l2 = mask_of(c.use_weight_decay && !c.decoupled), use_l1 = mask_of(c.use_l1);
  const Ranges<P, G, S> r(a);
  const RoundingKey kp = a.keys[0], km = a.keys[1], kv = a.keys[2], kx = a.keys[3];
  const std::uint32_t base = a.first;
  const std::uint32_t count = std::uint32_t(n);  // ranges are at most a chunk long
  for (std::uint32_t i = 0; i < count; ++i) {
    float pi = load_param<P, kRemainder>(r.p, r.rem, i);
    const float gi = G::load(r.g, i);
    float d = kScaled ? gi / divisor : gi;
    pi = choose(decoupled, pi * decay_factor, pi);
    if (kCoupled) {
      d = choose(l2, d + wd * pi, d);
      d = choose(use_l1, d + l1 * sign_of(pi), d);
    }
    const float mi = beta1 * S::load(r.s0, i) + omb1 * d;
    // (1 - beta2) * d first, as torch: d * d alone overflows float32 for |d| > 1.8e19.
    const float vi = beta2 * S::load(r.s1, i) + (omb2 * d) * d;
    store_state<S, kStochastic>(r.s0, i, mi, km, base + i);
    store_state<S, kStochastic>(r.s1, i, vi, kv, base + i);
    float second = vi;
    if (kAmsgrad) {
      const float old = S::load(r.s2, i);
      second = (old >= vi || old != old) ? old : vi;  // NaN on either side propagates
      store_state<S, kStochastic>(r.s2, i, second, kx, base + i);
    }
    const float denom = sqrt_of(second) * inv_sqrt_bc2 + eps;
    store_param<P, kStochastic, kRemainder>(r.p, r.rem, i, pi - step_size * (mi / denom), kp,
                                            base + i);
  }
}

template <class P, class G, class S, bool kRemainder>
void sgd_fused(const SgdConstants& c, const FusedArgs& a, std::size_t n) {
  with_flags(
      [&](auto stochastic, auto momentum, auto scaled, auto coupled) {
        sgd_fused_loop<P, G, S, kRemainder, stochastic, momentum, scaled, coupled>(c, a, n);
      },
      a.stochastic, c.use_momentum, c.scaled, c.use_weight_decay || c.use_l1);
}

template <class P, class G, class S, bool kRemainder>
void adam_fused(const AdamConstants& c, const FusedArgs& a, std::size_t n) {
  with_flags(
      [&](auto stochastic, auto amsgrad, auto scaled, auto coupled) {
        adam_fused_loop<P, G, S, kRemainder, stochastic, amsgrad, scaled, coupled>(c, a, n);
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
  return k;
}
