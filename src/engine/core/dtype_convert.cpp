// Value conversions between f32 and the storage dtypes. TO BE IMPLEMENTED (core helper).
#include "engine/core/dtype.hpp"
