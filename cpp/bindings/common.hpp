// Argument checking shared by the binding files. Every check runs before any kernel
// writes, so a call that raises has changed nothing.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "fusedops/fusedops.hpp"
#include "fusedops/small_vector.hpp"

namespace fusedops::bind {

namespace py = pybind11;

enum class Access { read, write };

// An argument that is one array or a list/tuple of arrays. `items` is one snapshot of
// the sequence taken when the call starts, holding owning references: another thread
// that edits the list while the kernel runs (GIL released), or a list subclass with its
// own __getitem__/__len__, cannot free or change the arrays the kernel works on.
struct ArrayArg {
  const char* name;
  bool is_list;
  SmallVector<py::object, 1> items;  // a single array without a heap allocation

  std::string label(std::size_t i) const;

  // One array (borrowed into an owning reference), or the items of a snapshot.
  static ArrayArg single(const char* name, py::handle obj) {
    ArrayArg arg{name, false, {}};
    arg.items.push_back(py::reinterpret_borrow<py::object>(obj));
    return arg;
  }
  static ArrayArg list(const char* name, std::vector<py::object> snapshot) {
    ArrayArg arg{name, true, {}};
    arg.items.reserve(snapshot.size());
    for (py::object& item : snapshot) arg.items.push_back(std::move(item));
    return arg;
  }
};

// Unpacks `obj` (an ndarray, or a list/tuple of them) into an ArrayArg. When `like` is
// given, `obj` must have the same form (single or list) and length.
ArrayArg unpack(const char* function, const char* name, py::handle obj,
                const ArrayArg* like = nullptr);

// A validated array: its memory, size and where it came from.
struct CheckedArray {
  void* data;
  std::size_t n;
  std::size_t nbytes;
  Access access;
  const ArrayArg* arg;
  std::size_t index;
  Dtype dtype = Dtype::f32;
};

// A checked array's memory [start, end), for the overlap check.
struct ArrayRange {
  std::uintptr_t start;
  std::uintptr_t end;
  const CheckedArray* array;
  bool written;
};

// Collects the arrays of one call and checks the rules every call shares: ndarray type,
// one float dtype for all, C-contiguity, alignment and writeability of written arrays,
// and (at the end) that no written array shares memory with another array.
class CallChecker {
 public:
  explicit CallChecker(const char* function) : function_(function) {}
  // per_array_dtypes: each array may be float32, float64, bfloat16 or float16 (the caller
  // checks the combination); otherwise all arrays share float32 or float64.
  CallChecker(const char* function, bool per_array_dtypes)
      : function_(function), per_array_dtypes_(per_array_dtypes) {}

  // Checks arg.items[i]; `shape_of` (optional) is an array whose shape it must match.
  CheckedArray check(const ArrayArg& arg, std::size_t i, Access access,
                     const ArrayArg* shape_arg = nullptr);
  void check_no_overlap() const;
  // Room for n arrays (a call that knows how many it checks grows its list once).
  void reserve(std::size_t n) { arrays_.reserve(n); }

  const char* function() const { return function_; }
  bool has_dtype() const { return has_dtype_; }
  Dtype dtype() const { return dtype_; }
  std::size_t array_count() const { return arrays_.size(); }

  [[noreturn]] void type_error(const std::string& message) const;
  [[noreturn]] void value_error(const std::string& message) const;

 private:
  // A call's arrays held inside the checker (more go to the heap).
  static constexpr std::size_t kLocalArrays = 8;

  const char* function_;
  bool per_array_dtypes_ = false;
  bool has_dtype_ = false;
  Dtype dtype_ = Dtype::f32;
  std::string dtype_origin_;
  SmallVector<CheckedArray, kLocalArrays> arrays_;
};

std::string shape_string(const py::array& a);

// New C-contiguous arrays made through NumPy's C API: pybind11's array constructors build
// a std::vector for the shape and another for the strides, two heap allocations for each
// result of a call. A 1-D array of n values of NumPy type number `type_num`; an array of
// `like`'s dtype and shape.
py::array new_vector(int type_num, std::size_t n);
py::array new_array_like(py::handle like);

// The snapshot of a list/tuple (any subclass) as owning references to its items.
std::vector<py::object> sequence_snapshot(py::handle seq);

// TypeError unless `obj` is a numpy.ndarray the kernels can address: not a masked array
// (its mask would be ignored).
void require_plain_ndarray(const std::string& where, py::handle obj);

// Checks shared by every array argument beyond dtype and shape: C-contiguous and aligned
// (read or written), writeable when written. `flags` are the array's NumPy flags.
// True when require_layout would pass (no strings built).
bool layout_ok(int flags, Access access);

// The checks of a list of arrays read each array's header and its shape, two blocks of
// the heap per array (a step over 1000 tensors checks 4000 arrays): a loop over items[i]
// calls this to request the header of the array kHeaderAhead on, and the shape of the one
// kShapeAhead on (whose header arrived by then), so that its checks find them in the L1.
// An exact ndarray's shape only: another object may be shorter (its check rejects it).
// (AMD EPYC Zen 4, 2 threads, in-process A/B: fo.adam_step over 1000 x 256 float32 and
// bfloat16 0.95-0.96x the time, 4000 x 64 0.97-0.99x, sgd_step 0.95-0.99x; the classes,
// which check only the grads at each step, measured 1.02-1.08x slower with it: not
// there.)
constexpr std::size_t kHeaderAhead = 8;
constexpr std::size_t kShapeAhead = 4;
template <class Items>
inline void request_array_ahead(const Items& items, std::size_t i) {
  const std::size_t n = items.size();
  if (i + kHeaderAhead < n) __builtin_prefetch(items[i + kHeaderAhead].ptr());
  if (i + kShapeAhead < n) {
    PyObject* obj = items[i + kShapeAhead].ptr();
    if (Py_TYPE(obj) == py::detail::npy_api::get().PyArray_Type_) {
      __builtin_prefetch(py::detail::array_proxy(obj)->dimensions);
    }
  }
}
void require_layout(const std::string& where, int flags, Access access);

std::string type_name(py::handle obj);

// Scalar arguments, taken as Python objects so that a wrong type gets an error naming
// the argument (pybind11's own conversion error names none). `fn` prefixes messages.
double real_arg(const char* fn, const char* name, py::handle obj);     // int or float, not bool
bool flag_arg(const char* fn, const char* name, py::handle obj);       // bool (or numpy.bool_)
long long int_arg(const char* fn, const char* name, py::handle obj);   // int, not bool
std::pair<double, double> pair_arg(const char* fn, const char* name, py::handle obj);

// The float dtype of an array's NumPy type number, if it is one fusedops computes with
// (bfloat16 is ml_dtypes.bfloat16).
bool dtype_of_type_num(int type_num, Dtype* out);

// False for a byte-swapped array: same type number, but its values would be misread.
bool is_native_byte_order(py::handle a);

// Hyperparameter checks: ValueError naming the argument unless finite and in range.
void require_finite(const char* function, const char* name, double value);
void require_at_least(const char* function, const char* name, double value, double low);
void require_range(const char* function, const char* name, double value, double low,
                   double high, bool high_inclusive);
void require_positive(const char* function, const char* name, double value);

}  // namespace fusedops::bind
