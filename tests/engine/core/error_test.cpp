#include "engine/core/error.hpp"

#include <gtest/gtest.h>

namespace refinery {
namespace {

TEST(Error, UserErrorCarriesKindAndFormattedMessage) {
  try {
    throw_user_error("tensor ", "w", " has ", 3, " bytes");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    EXPECT_STREQ(e.what(), "tensor w has 3 bytes");
  }
}

TEST(Error, CheckThrowsInternal) {
  EXPECT_THROW(
      {
        try {
          REFINERY_CHECK(1 + 1 == 3, "math");
        } catch (const Error& e) {
          EXPECT_EQ(e.kind(), ErrorKind::kInternal);
          throw;
        }
      },
      Error);
}

}  // namespace
}  // namespace refinery
