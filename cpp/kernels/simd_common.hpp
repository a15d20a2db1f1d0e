// Helpers shared by the kernel loops. Included only inside the per-ISA namespace of
// cpp/kernels/isa_table.cpp, so every function here gets internal linkage per ISA
// (no std:: inline function is used in a loop: a weak symbol compiled with AVX-512
// could otherwise be picked by the linker for the scalar path).
#pragma once

inline float sqrt_of(float x) { return __builtin_sqrtf(x); }
inline double sqrt_of(double x) { return __builtin_sqrt(x); }

inline float abs_of(float x) { return __builtin_fabsf(x); }
inline double abs_of(double x) { return __builtin_fabs(x); }

// sign(x) as torch.sign: -1, +1, and x itself for +-0 and NaN.
template <class T>
inline T sign_of(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x);
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
