#include "common.hpp"

#include "fusedops/mixed.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace fusedops::bind {

namespace {

constexpr int kAlignedFlag = py::detail::npy_api::NPY_ARRAY_ALIGNED_;

std::string format_number(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

// A module attribute kept for the life of the process (a type checked against often).
PyObject* imported(const char* module, const char* name) {
  return py::object(py::module_::import(module).attr(name)).release().ptr();
}

constexpr int kHalfTypeNum = 23;     // NPY_HALF
constexpr int kUserTypeNum = 256;    // NPY_USERDEF: registered types such as bfloat16

// The type number NumPy gave ml_dtypes.bfloat16 in this process (-1 without ml_dtypes);
// asked once, under the GIL, the first time a user-defined dtype is seen.
int bfloat16_type_num() {
  static const int num = [] {
    try {
      const py::object dtype =
          py::module_::import("numpy").attr("dtype")(py::module_::import("ml_dtypes").attr("bfloat16"));
      return dtype.attr("num").cast<int>();
    } catch (const py::error_already_set&) {
      return -1;
    }
  }();
  return num;
}

bool is_sequence(py::handle obj) { return PyList_Check(obj.ptr()) || PyTuple_Check(obj.ptr()); }

// numpy.ma.MaskedArray, imported once (under the GIL) the first time a non-exact ndarray
// subclass is seen.
bool is_masked_array(py::handle obj) {
  static PyObject* masked = imported("numpy.ma", "MaskedArray");
  const int found = PyObject_IsInstance(obj.ptr(), masked);
  if (found < 0) throw py::error_already_set();
  return found == 1;
}

[[noreturn]] void argument_type_error(const char* fn, const char* name, const char* expected,
                                      py::handle obj) {
  std::string got = type_name(obj);
  if (PyUnicode_Check(obj.ptr())) got += " " + py::repr(obj).cast<std::string>();
  throw py::type_error(std::string(fn) + ": " + name + " must be " + expected + ", got " + got);
}

}  // namespace

std::string type_name(py::handle obj) { return Py_TYPE(obj.ptr())->tp_name; }

std::vector<py::object> sequence_snapshot(py::handle seq) {
  // PySequence_Fast returns a list or tuple (itself for a list or tuple, subclasses
  // included, so their stored items are read, not what an overridden __getitem__ says).
  // Copying the items to owning references happens with the GIL held: nothing runs in
  // between.
  const py::object fast =
      py::reinterpret_steal<py::object>(PySequence_Fast(seq.ptr(), "expected a sequence"));
  if (!fast) throw py::error_already_set();
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.ptr());
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  std::vector<py::object> out;
  out.reserve(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) out.push_back(py::reinterpret_borrow<py::object>(items[i]));
  return out;
}

void require_plain_ndarray(const std::string& where, py::handle obj) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(where + " must be a numpy.ndarray, got " + type_name(obj));
  }
  if (Py_TYPE(obj.ptr()) != py::detail::npy_api::get().PyArray_Type_ && is_masked_array(obj)) {
    throw py::type_error(where + " is a numpy.ma.MaskedArray, whose mask would be ignored; "
                         "pass x.filled(...) or np.asarray(x) to use the data as it is");
  }
}

bool layout_ok(int flags, Access access) {
  const int needed = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | kAlignedFlag |
                     (access == Access::write ? py::detail::npy_api::NPY_ARRAY_WRITEABLE_ : 0);
  return (flags & needed) == needed;
}

void require_layout(const std::string& where, int flags, Access access) {
  if (!(flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) {
    throw py::value_error(where +
                          " is not C-contiguous; pass np.ascontiguousarray(...) (and, for an array "
                          "that is updated in place, keep using the contiguous copy)");
  }
  if (!(flags & kAlignedFlag)) {
    throw py::value_error(where + " is not aligned to its dtype; pass a copy (np.array(x))");
  }
  if (access == Access::write && !(flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) {
    throw py::value_error(where + " is read-only but is written in place; pass a writeable array");
  }
}

double real_arg(const char* fn, const char* name, py::handle obj) {
  PyObject* o = obj.ptr();
  if (PyFloat_CheckExact(o)) return PyFloat_AS_DOUBLE(o);
  static PyObject* real = imported("numbers", "Real");
  const int is_real = PyBool_Check(o) ? 0 : PyObject_IsInstance(o, real);
  if (is_real < 0) throw py::error_already_set();
  if (!is_real) argument_type_error(fn, name, "a real number (int or float)", obj);
  const double value = PyFloat_AsDouble(o);
  if (value == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  return value;
}

bool flag_arg(const char* fn, const char* name, py::handle obj) {
  PyObject* o = obj.ptr();
  if (o == Py_True) return true;
  if (o == Py_False) return false;
  static PyObject* numpy_bool = imported("numpy", "bool_");
  const int is_bool = PyObject_IsInstance(o, numpy_bool);
  if (is_bool < 0) throw py::error_already_set();
  if (!is_bool) argument_type_error(fn, name, "a bool (True or False)", obj);
  return PyObject_IsTrue(o) == 1;
}

long long int_arg(const char* fn, const char* name, py::handle obj) {
  PyObject* o = obj.ptr();
  if (PyLong_CheckExact(o)) {  // the common case, without the ABC isinstance (~1 us)
    int overflow = 0;
    const long long value = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow == 0) return value;
  }
  static PyObject* integral = imported("numbers", "Integral");
  const int is_int = PyBool_Check(o) ? 0 : PyObject_IsInstance(o, integral);
  if (is_int < 0) throw py::error_already_set();
  if (!is_int) argument_type_error(fn, name, "an int", obj);
  const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(o));
  if (!index) throw py::error_already_set();
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0) {
    throw py::value_error(std::string(fn) + ": " + name + " is out of range, got " +
                          py::repr(obj).cast<std::string>());
  }
  if (value == -1 && PyErr_Occurred()) throw py::error_already_set();
  return value;
}

std::pair<double, double> pair_arg(const char* fn, const char* name, py::handle obj) {
  if (!is_sequence(obj) || PySequence_Size(obj.ptr()) != 2) {
    argument_type_error(fn, name, "a pair (tuple of 2 real numbers)", obj);
  }
  const std::vector<py::object> items = sequence_snapshot(obj);
  const std::string first = std::string(name) + "[0]", second = std::string(name) + "[1]";
  return {real_arg(fn, first.c_str(), items[0]), real_arg(fn, second.c_str(), items[1])};
}

bool dtype_of_type_num(int type_num, Dtype* out) {
  if (type_num == py::detail::npy_api::NPY_FLOAT_) {
    *out = Dtype::f32;
  } else if (type_num == py::detail::npy_api::NPY_DOUBLE_) {
    *out = Dtype::f64;
  } else if (type_num == kHalfTypeNum) {
    *out = Dtype::f16;
  } else if (type_num >= kUserTypeNum && type_num == bfloat16_type_num()) {
    *out = Dtype::bf16;
  } else {
    return false;
  }
  return true;
}

bool is_native_byte_order(py::handle a) {
  const char order =
      py::detail::array_descriptor_proxy(py::detail::array_proxy(a.ptr())->descr)->byteorder;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return order != '<';
#else
  return order != '>';
#endif
}

std::string ArrayArg::label(std::size_t i) const {
  return is_list ? std::string(name) + "[" + std::to_string(i) + "]" : std::string(name);
}

std::string shape_string(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (d) s += ", ";
    s += std::to_string(a.shape(d));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

namespace {

py::array new_array(PyObject* descr, int nd, const Py_intptr_t* dims) {
  auto& api = py::detail::npy_api::get();
  // PyArray_NewFromDescr takes the reference to descr, also when it fails.
  PyObject* a = api.PyArray_NewFromDescr_(api.PyArray_Type_, descr, nd, dims, nullptr, nullptr, 0,
                                          nullptr);
  if (a == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::array>(a);
}

}  // namespace

py::array new_vector(int type_num, std::size_t n) {
  PyObject* descr = py::detail::npy_api::get().PyArray_DescrFromType_(type_num);
  if (descr == nullptr) throw py::error_already_set();
  const Py_intptr_t dims[1] = {static_cast<Py_intptr_t>(n)};
  return new_array(descr, 1, dims);
}

py::array new_array_like(py::handle like) {
  const auto* fields = py::detail::array_proxy(like.ptr());
  Py_INCREF(fields->descr);
  return new_array(fields->descr, fields->nd, fields->dimensions);
}

ArrayArg unpack(const char* function, const char* name, py::handle obj, const ArrayArg* like) {
  const auto where = [&] { return std::string(function) + ": " + name; };  // for errors
  ArrayArg arg{name, false, {}};
  if (is_sequence(obj)) {
    arg = ArrayArg::list(name, sequence_snapshot(obj));
  } else if (py::isinstance<py::array>(obj)) {
    arg = ArrayArg::single(name, obj);
  } else {
    throw py::type_error(where() +
                         " must be a numpy.ndarray or a list/tuple of numpy.ndarray, got " +
                         type_name(obj));
  }
  if (like != nullptr) {
    if (like->is_list != arg.is_list) {
      throw py::type_error(where() + " must be " +
                           (like->is_list ? "a list/tuple of arrays" : "a single array") +
                           " like " + like->name + ", got " + type_name(obj));
    }
    if (like->items.size() != arg.items.size()) {
      throw py::value_error(where() + " has " + std::to_string(arg.items.size()) +
                            " arrays but " + like->name + " has " +
                            std::to_string(like->items.size()));
    }
  }
  return arg;
}

void CallChecker::type_error(const std::string& message) const {
  throw py::type_error(std::string(function_) + ": " + message);
}

void CallChecker::value_error(const std::string& message) const {
  throw py::value_error(std::string(function_) + ": " + message);
}

CheckedArray CallChecker::check(const ArrayArg& arg, std::size_t i, Access access,
                                const ArrayArg* shape_arg) {
  py::handle obj = arg.items[i];
  // (The error paths build the argument's label; an exact ndarray skips the isinstance.)
  if (Py_TYPE(obj.ptr()) != py::detail::npy_api::get().PyArray_Type_) {
    require_plain_ndarray(std::string(function_) + ": " + arg.label(i), obj);
  }
  // Runs for every array of every call: the checks read the array's fields directly and
  // build Python objects only for error messages.
  const auto* fields = py::detail::array_proxy(obj.ptr());
  const int num = py::detail::array_descriptor_proxy(fields->descr)->type_num;
  const auto array = [obj] { return py::reinterpret_borrow<py::array>(obj); };
  Dtype dtype = Dtype::f32;
  const bool known = dtype_of_type_num(num, &dtype);
  if (!known || (!per_array_dtypes_ && dtype != Dtype::f32 && dtype != Dtype::f64)) {
    type_error(arg.label(i) + " has dtype " + py::str(array().dtype()).cast<std::string>() +
               (per_array_dtypes_ ? "; expected float32, float64, bfloat16 or float16"
                                  : "; expected float32 or float64"));
  }
  // A byte-swapped array has the same type number but would be read as garbage.
  if (!is_native_byte_order(obj)) {
    type_error(arg.label(i) + " has dtype " + py::str(array().dtype()).cast<std::string>() +
               " in non-native byte order; pass x.astype(x.dtype.newbyteorder('='))");
  }
  // With per-array dtypes the caller checks the combination.
  if (!per_array_dtypes_ && !has_dtype_) {
    has_dtype_ = true;
    dtype_ = dtype;
    dtype_origin_ = arg.label(i);
  } else if (!per_array_dtypes_ && dtype != dtype_) {
    type_error(arg.label(i) + " has dtype " + (dtype == Dtype::f32 ? "float32" : "float64") +
               " but " + dtype_origin_ + " has dtype " +
               (dtype_ == Dtype::f32 ? "float32" : "float64") +
               "; all arrays of one call must share one dtype");
  }
  if (shape_arg != nullptr) {
    const auto* ref = py::detail::array_proxy(shape_arg->items[i].ptr());
    bool same = ref->nd == fields->nd;
    for (int d = 0; same && d < fields->nd; ++d) same = ref->dimensions[d] == fields->dimensions[d];
    if (!same) {
      value_error(arg.label(i) + " has shape " + shape_string(array()) + " but " +
                  shape_arg->label(i) + " has shape " +
                  shape_string(py::reinterpret_borrow<py::array>(shape_arg->items[i])) +
                  "; they must be equal");
    }
  }
  if (!layout_ok(fields->flags, access)) {
    require_layout(std::string(function_) + ": " + arg.label(i), fields->flags, access);
  }
  std::size_t n = 1;
  for (int d = 0; d < fields->nd; ++d) n *= static_cast<std::size_t>(fields->dimensions[d]);
  CheckedArray checked{fields->data, n, n * dtype_size(dtype), access, &arg, i, dtype};
  arrays_.push_back(checked);
  return checked;
}

namespace {

// Sorts by start, stably (equal starts keep the order the arrays were checked in). A few
// ranges by insertion; more by their starts' bytes, least significant first, skipping the
// bytes all starts share. (A comparison sort of a 1000-tensor call's 4000 ranges took an
// eighth of the call, most of it in mispredicted branches.)
template <class Ranges>
void sort_by_start(Ranges& order) {
  const std::size_t n = order.size();
  if (n <= 32) {  // insertion sort: stable, and no buffer to allocate (std::stable_sort's)
    for (std::size_t i = 1; i < n; ++i) {
      const ArrayRange r = order[i];
      std::size_t j = i;
      for (; j > 0 && r.start < order[j - 1].start; --j) order[j] = order[j - 1];
      order[j] = r;
    }
    return;
  }
  std::uintptr_t any = 0, all = ~std::uintptr_t(0);
  for (const ArrayRange& r : order) {
    any |= r.start;
    all &= r.start;
  }
  CallVector<ArrayRange> from(order.begin(), order.end()), to(n);
  for (unsigned shift = 0; shift < 8 * sizeof(std::uintptr_t); shift += 8) {
    if ((((any ^ all) >> shift) & 0xFF) == 0) continue;  // the same byte in every start
    std::size_t offset[257] = {};
    for (const ArrayRange& r : from) ++offset[((r.start >> shift) & 0xFF) + 1];
    for (std::size_t b = 0; b < 256; ++b) offset[b + 1] += offset[b];
    for (const ArrayRange& r : from) to[offset[(r.start >> shift) & 0xFF]++] = r;
    from.swap(to);
  }
  std::copy(from.begin(), from.end(), order.begin());
}

}  // namespace

// The arrays of the last call on this thread with more than kRememberRanges arrays that
// passed the overlap check: (start, end, written) of each array with bytes, in the order
// the call checked them. A call whose arrays have exactly those ranges passes without
// sorting them again: overlap depends on nothing else. A training loop passes the same
// lists step after step. (callgrind, one thread, fo.adam_step over 1,000 x 256, a call:
// float32 2.60M -> 2.03M instructions, bfloat16 4.26M -> 2.63M.)
constexpr std::size_t kRememberRanges = 32;

namespace {
struct PassedRanges {
  std::vector<std::uintptr_t> values;  // start, end, written (0 or 1) per array
};
PassedRanges& passed_ranges() {
  thread_local PassedRanges passed;
  return passed;
}
}  // namespace

void CallChecker::check_no_overlap() const {
  const bool remember = arrays_.size() > kRememberRanges;
  if (remember) {
    const std::vector<std::uintptr_t>& last = passed_ranges().values;
    std::size_t k = 0;
    bool same = true;
    for (const CheckedArray& a : arrays_) {
      if (a.nbytes == 0) continue;
      const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(a.data);
      if (k + 3 > last.size() || last[k] != start || last[k + 1] != start + a.nbytes ||
          last[k + 2] != std::uintptr_t(a.access == Access::write)) {
        same = false;
        break;
      }
      k += 3;
    }
    if (same && k == last.size()) return;
  }
  // Sort the memory ranges by start; a range overlaps an earlier one iff it starts
  // before the furthest end seen so far. Only pairs involving a written array count.
  SmallVector<ArrayRange, kLocalArrays> order;
  order.reserve(arrays_.size());
  for (const CheckedArray& a : arrays_) {
    if (a.nbytes > 0) {
      const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(a.data);
      order.push_back({start, start + a.nbytes, &a, a.access == Access::write});
    }
  }
  sort_by_start(order);
  std::uintptr_t max_end = 0;
  std::uintptr_t max_written_end = 0;
  const CheckedArray* max_end_owner = nullptr;
  const CheckedArray* max_written_owner = nullptr;
  for (const ArrayRange& range : order) {
    const CheckedArray* a = range.array;
    const std::uintptr_t start = range.start;
    const CheckedArray* clash = nullptr;
    if (range.written && max_end_owner != nullptr && start < max_end) {
      clash = max_end_owner;
    } else if (max_written_owner != nullptr && start < max_written_end) {
      clash = max_written_owner;
    }
    if (clash != nullptr) {
      value_error(a->arg->label(a->index) + " shares memory with " +
                  clash->arg->label(clash->index) +
                  "; an array written by a call may not overlap any other array of the call");
    }
    const std::uintptr_t end = range.end;
    if (max_end_owner == nullptr || end > max_end) {
      max_end = end;
      max_end_owner = a;
    }
    if (range.written && (max_written_owner == nullptr || end > max_written_end)) {
      max_written_end = end;
      max_written_owner = a;
    }
  }
  if (remember) {
    std::vector<std::uintptr_t>& values = passed_ranges().values;
    values.clear();
    for (const CheckedArray& a : arrays_) {
      if (a.nbytes == 0) continue;
      const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(a.data);
      values.insert(values.end(), {start, start + a.nbytes, std::uintptr_t(a.access == Access::write)});
    }
  }
}

void require_finite(const char* function, const char* name, double value) {
  if (!std::isfinite(value)) {
    throw py::value_error(std::string(function) + ": " + name + " must be finite, got " +
                          format_number(value));
  }
}

void require_at_least(const char* function, const char* name, double value, double low) {
  require_finite(function, name, value);
  if (!(value >= low)) {
    throw py::value_error(std::string(function) + ": " + name + " must be >= " +
                          format_number(low) + ", got " + format_number(value));
  }
}

void require_range(const char* function, const char* name, double value, double low,
                   double high, bool high_inclusive) {
  require_finite(function, name, value);
  if (!(value >= low) || (high_inclusive ? !(value <= high) : !(value < high))) {
    throw py::value_error(std::string(function) + ": " + name + " must be in [" +
                          format_number(low) + ", " + format_number(high) +
                          (high_inclusive ? "]" : ")") + ", got " + format_number(value));
  }
}

void require_positive(const char* function, const char* name, double value) {
  require_finite(function, name, value);
  if (!(value > 0)) {
    throw py::value_error(std::string(function) + ": " + name + " must be > 0, got " +
                          format_number(value));
  }
}

}  // namespace fusedops::bind
