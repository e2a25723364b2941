#pragma once
// Test support: run a callable that must throw a refinery::Error of a given kind and get the
// error's message back, so that a test can assert on what the message names.

#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "engine/core/error.hpp"

namespace refinery::test {

// Runs `f`; expects it to throw a refinery::Error of `kind` and returns its message. Records a
// (non-fatal) gtest failure when `f` throws nothing or an Error of another kind; returns "" when
// nothing was thrown. Other exception types propagate, which fails the test as well.
template <typename F>
std::string error_message_of(F&& f, ErrorKind kind = ErrorKind::kUser) {
  try {
    std::forward<F>(f)();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a refinery::Error, but nothing was thrown";
  return "";
}

}  // namespace refinery::test
