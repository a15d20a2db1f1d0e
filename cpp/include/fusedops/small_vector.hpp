// A vector whose first N elements live inside the object: the per-call lists of a
// binding (its array arguments, their checks) and of a kernel call (its work items) hold a
// handful of entries, and a heap allocation and free for each such list cost a small
// call more than its checks do (batch norm at (2, 1): about a quarter of the call went to
// malloc and free). Past N elements it moves to the heap and grows as std::vector does.
#pragma once

#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

#include "fusedops/block_cache.hpp"

namespace fusedops {

template <class T, std::size_t N>
class SmallVector {
  static_assert(N > 0, "SmallVector needs inline room for at least one element");
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "SmallVector moves its elements when it grows");
  static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__,
                "BlockCache's small blocks have new's default alignment");

 public:
  SmallVector() = default;
  SmallVector(const SmallVector& other) {
    reserve(other.size_);
    for (const T& value : other) push_back(value);
  }
  SmallVector(SmallVector&& other) noexcept { take(std::move(other)); }
  SmallVector& operator=(const SmallVector& other) {
    if (this != &other) {
      clear();
      reserve(other.size_);
      for (const T& value : other) push_back(value);
    }
    return *this;
  }
  SmallVector& operator=(SmallVector&& other) noexcept {
    if (this != &other) {
      release();
      take(std::move(other));
    }
    return *this;
  }
  ~SmallVector() { release(); }

  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T* data() { return data_; }
  const T* data() const { return data_; }
  T& operator[](std::size_t i) { return data_[i]; }
  const T& operator[](std::size_t i) const { return data_[i]; }
  T& back() { return data_[size_ - 1]; }
  const T& back() const { return data_[size_ - 1]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }

  void reserve(std::size_t capacity) {
    if (capacity > capacity_) grow_to(capacity);
  }
  void push_back(const T& value) { emplace_back(value); }
  void push_back(T&& value) { emplace_back(std::move(value)); }
  template <class... Args>
  T& emplace_back(Args&&... args) {
    if (size_ == capacity_) {
      // Built first: an argument may refer to an element that growing moves.
      T value(std::forward<Args>(args)...);
      grow_to(2 * capacity_);
      return *new (data_ + size_++) T(std::move(value));
    }
    return *new (data_ + size_++) T(std::forward<Args>(args)...);
  }
  void clear() {
    for (std::size_t i = 0; i < size_; ++i) data_[i].~T();
    size_ = 0;
  }

 private:
  T* local() { return std::launder(reinterpret_cast<T*>(local_)); }
  bool on_heap() const { return data_ != reinterpret_cast<const T*>(local_); }

  // Heap storage comes from (and goes back to) the thread's BlockCache.
  void grow_to(std::size_t capacity) {
    std::size_t got = 0;
    T* heap = static_cast<T*>(BlockCache::take(capacity * sizeof(T), &got));
    for (std::size_t i = 0; i < size_; ++i) {
      new (heap + i) T(std::move(data_[i]));
      data_[i].~T();
    }
    if (on_heap()) BlockCache::give(data_, capacity_ * sizeof(T));
    data_ = heap;
    capacity_ = got / sizeof(T);
  }

  // Destroys the elements and frees heap storage; back to the empty inline state.
  void release() {
    clear();
    if (on_heap()) BlockCache::give(data_, capacity_ * sizeof(T));
    data_ = local();
    capacity_ = N;
  }

  // Takes other's elements (this is empty and inline); other is left empty.
  void take(SmallVector&& other) {
    if (other.on_heap()) {
      data_ = other.data_;
      size_ = other.size_;
      capacity_ = other.capacity_;
      other.data_ = other.local();
      other.size_ = 0;
      other.capacity_ = N;
      return;
    }
    for (std::size_t i = 0; i < other.size_; ++i) new (data_ + i) T(std::move(other.data_[i]));
    size_ = other.size_;
    other.clear();
  }

  alignas(T) unsigned char local_[N * sizeof(T)];
  T* data_ = local();
  std::size_t size_ = 0;
  std::size_t capacity_ = N;
};

}  // namespace fusedops
