#include <algorithm>
#include <filesystem>
#include <limits>

#include "engine/io/h5_file.hpp"

// H5File and H5Dataset: opening and creating files, chunked extendable datasets, row I/O.

namespace refinery::io {
namespace {

// Chunks default to about this many bytes: large enough for deflate and sequential reads, small
// enough that a partial chunk being appended to stays cheap to rewrite.
constexpr uint64_t kDefaultChunkBytes = uint64_t{1} << 20;
// Per-dataset chunk cache. HDF5's default (1 MiB) would make every append to a chunk larger than
// that read, modify and rewrite the whole chunk on disk; 16 MiB holds several default chunks.
constexpr size_t kChunkCacheBytes = size_t{16} << 20;
constexpr size_t kChunkCacheSlots = 521;  // a prime, as the HDF5 manual advises
// HDF5 limits one chunk to 4 GiB.
constexpr uint64_t kMaxChunkBytes = (uint64_t{1} << 32) - 1;

// A dataset access property list whose chunk cache holds at least two chunks of `chunk_bytes`;
// H5P_DEFAULT (the file-wide 16 MiB cache) when that is enough.
H5Handle access_plist_for(uint64_t chunk_bytes) {
  if (chunk_bytes * 2 <= kChunkCacheBytes) return H5Handle();
  hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
  H5Handle handle(dapl, H5Pclose);
  if (dapl < 0 ||
      H5Pset_chunk_cache(dapl, kChunkCacheSlots, static_cast<size_t>(chunk_bytes * 2), 1.0) < 0) {
    throw_h5_error(ErrorKind::kInternal, "", "", "cannot set the chunk cache");
  }
  return handle;
}

hid_t plist_or_default(const H5Handle& h) { return h.valid() ? h.get() : H5P_DEFAULT; }

// The dataspaces that move rows [begin, begin + count) of dataset `dataset`, whose rows have the
// shape shape[1:]: the dataset's space with those rows selected, and a memory space of shape
// [count, shape[1:]...]. Failures are errors of `kind` naming `file` and `object`; `direction` is
// "read" or "write".
struct RowSpaces {
  H5Handle file_space;
  H5Handle mem_space;
};
RowSpaces row_spaces(hid_t dataset, const std::vector<uint64_t>& shape, uint64_t begin,
                     uint64_t count, ErrorKind kind, const std::string& file,
                     const std::string& object, const char* direction) {
  std::vector<hsize_t> start(shape.size(), 0), counts(shape.begin(), shape.end());
  start[0] = begin;
  counts[0] = count;
  H5Handle file_space =
      h5_check_id(H5Dget_space(dataset), H5Sclose, kind, file, object, "H5Dget_space");
  h5_check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr,
                               counts.data(), nullptr),
           kind, file, object, str("cannot select the rows to ", direction));
  H5Handle mem_space =
      h5_check_id(H5Screate_simple(static_cast<int>(counts.size()), counts.data(), nullptr),
                  H5Sclose, kind, file, object, "H5Screate_simple");
  return {std::move(file_space), std::move(mem_space)};
}

}  // namespace

// ---- H5File
// ---------------------------------------------------------------------------------------

namespace {

// File access: the chunk cache every dataset of the file gets unless it asks for more.
H5Handle file_access_plist(const std::string& path) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Handle handle(fapl, H5Pclose);
  if (fapl < 0 || H5Pset_cache(fapl, 0, kChunkCacheSlots, kChunkCacheBytes, 1.0) < 0)
    throw_h5_error(ErrorKind::kInternal, path, "", "cannot build the file access properties");
  return handle;
}

}  // namespace

H5File H5File::create(const std::string& path) {
  h5_silence_errors();
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec)) {
    throw_user_error("cannot create ", path, ": the directory ", parent.string(),
                     " does not exist; create it first or choose another output path");
  }
  H5Handle fapl = file_access_plist(path);
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
  if (id < 0) {
    throw_h5_error(ErrorKind::kUser, path, "",
                   "cannot create the HDF5 file; check that its directory is writable and has "
                   "free space");
  }
  return H5File(H5Handle(id, H5Fclose), path);
}

H5File H5File::open(const std::string& path, bool writable) {
  h5_silence_errors();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw_user_error("HDF5 file ", path, " does not exist; check the path");
  if (!std::filesystem::is_regular_file(path, ec))
    throw_user_error(path, " is not a regular file; expected an HDF5 (.h5) file");
  H5Handle fapl = file_access_plist(path);
  hid_t id = H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl.get());
  if (id < 0) {
    throw_h5_error(ErrorKind::kUser, path, "",
                   "cannot open the file as HDF5: it is not an HDF5 file, or it is truncated or "
                   "corrupt (an interrupted write?); recreate it");
  }
  return H5File(H5Handle(id, H5Fclose), path);
}

bool H5File::exists(const std::string& path) const {
  h5_silence_errors();
  if (path.empty() || path == "/") return true;
  // H5Lexists fails (rather than answering false) when an intermediate group is missing, so walk
  // the path one component at a time.
  size_t pos = path[0] == '/' ? 1 : 0;
  while (true) {
    size_t slash = path.find('/', pos);
    std::string prefix = path.substr(0, slash);
    htri_t found = H5Lexists(id(), prefix.c_str(), H5P_DEFAULT);
    if (found < 0) fail(ErrorKind::kUser, str("cannot look up ", prefix));
    if (found == 0) return false;
    if (slash == std::string::npos || slash + 1 >= path.size()) return true;
    pos = slash + 1;
  }
}

bool H5File::is_dataset(const std::string& path) const {
  if (!exists(path)) return false;
  hid_t obj = H5Oopen(id(), path.c_str(), H5P_DEFAULT);
  if (obj < 0) {
    H5Eclear2(H5E_DEFAULT);  // a dangling soft link, say: not a dataset
    return false;
  }
  H5Handle handle(obj, H5Oclose);
  return H5Iget_type(obj) == H5I_DATASET;
}

H5Dataset H5File::create_dataset(const std::string& path, DType dtype,
                                 const H5DatasetLayout& layout) {
  h5_silence_errors();
  if (exists(path)) fail(ErrorKind::kInternal, str("cannot create ", path, ": it already exists"));
  const int rank = 1 + static_cast<int>(layout.row_shape.size());
  uint64_t row_elements = 1;
  for (uint64_t d : layout.row_shape) {
    REFINERY_CHECK(d > 0, "dataset ", path, " has a zero row dimension");
    row_elements *= d;
  }
  const uint64_t row_bytes = row_elements * (dtype_bits(dtype) / 8);
  uint64_t chunk_rows = layout.chunk_rows;
  if (chunk_rows == 0) chunk_rows = std::max<uint64_t>(1, kDefaultChunkBytes / row_bytes);
  REFINERY_CHECK(chunk_rows * row_bytes <= kMaxChunkBytes, "chunk of ", chunk_rows, " rows of ",
                 row_bytes, " bytes exceeds HDF5's 4 GiB chunk limit");

  std::vector<hsize_t> dims(rank), max_dims(rank), chunk(rank);
  dims[0] = 0;
  max_dims[0] = H5S_UNLIMITED;
  chunk[0] = chunk_rows;
  for (int i = 1; i < rank; ++i) dims[i] = max_dims[i] = chunk[i] = layout.row_shape[i - 1];

  const ErrorKind k = ErrorKind::kInternal;
  H5Handle space = h5_check_id(H5Screate_simple(rank, dims.data(), max_dims.data()), H5Sclose, k,
                               file_path_, path, "cannot create the dataspace");
  H5Handle dcpl = h5_check_id(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, k, file_path_, path,
                              "cannot create the dataset properties");
  h5_check(H5Pset_chunk(dcpl.get(), rank, chunk.data()), k, file_path_, path, "H5Pset_chunk");
  // Object timestamps would make two runs over the same input write different bytes.
  h5_check(H5Pset_obj_track_times(dcpl.get(), 0), k, file_path_, path, "H5Pset_obj_track_times");
  if (layout.deflate_level > 0 && h5_deflate_available()) {
    if (layout.shuffle) h5_check(H5Pset_shuffle(dcpl.get()), k, file_path_, path, "H5Pset_shuffle");
    h5_check(H5Pset_deflate(dcpl.get(), static_cast<unsigned>(std::min(layout.deflate_level, 9))),
             k, file_path_, path, "H5Pset_deflate");
  }
  H5Handle lcpl = h5_check_id(H5Pcreate(H5P_LINK_CREATE), H5Pclose, k, file_path_, path,
                              "cannot create the link properties");
  h5_check(H5Pset_create_intermediate_group(lcpl.get(), 1), k, file_path_, path,
           "H5Pset_create_intermediate_group");
  H5Handle dapl = access_plist_for(chunk_rows * row_bytes);
  H5Handle type = h5_file_type(dtype);
  hid_t ds = H5Dcreate2(id(), path.c_str(), type.get(), space.get(), lcpl.get(), dcpl.get(),
                        plist_or_default(dapl));
  H5Handle handle = h5_check_id(ds, H5Dclose, k, file_path_, path, "cannot create the dataset");
  return H5Dataset(std::move(handle), file_path_, path);
}

H5Dataset H5File::open_dataset(const std::string& path) const {
  h5_silence_errors();
  if (!is_dataset(path)) {
    throw_user_error(file_path_, " has no dataset ", path,
                     "; is it the right kind of file (a refinery token dataset or logit cache)?");
  }
  H5Handle handle = h5_check_id(H5Dopen2(id(), path.c_str(), H5P_DEFAULT), H5Dclose,
                                ErrorKind::kUser, file_path_, path, "cannot open the dataset");
  H5Dataset dataset(std::move(handle), file_path_, path);
  // Reopen with a chunk cache that holds two chunks when its chunks are larger than the default.
  uint64_t chunk_rows = dataset.chunk_rows();
  if (chunk_rows > 0) {
    uint64_t elem_bytes = H5Tget_size(H5Handle(H5Dget_type(dataset.id()), H5Tclose).get());
    H5Handle dapl = access_plist_for(chunk_rows * dataset.row_size() * elem_bytes);
    if (dapl.valid()) {
      H5Handle reopened =
          h5_check_id(H5Dopen2(id(), path.c_str(), dapl.get()), H5Dclose, ErrorKind::kUser,
                      file_path_, path, "cannot open the dataset");
      return H5Dataset(std::move(reopened), file_path_, path);
    }
  }
  return dataset;
}

void H5File::flush() {
  if (H5Fflush(id(), H5F_SCOPE_GLOBAL) < 0)
    fail(ErrorKind::kInternal, "cannot flush the file to disk (disk full?)");
}

void H5File::close() {
  if (handle_.valid() && handle_.close() < 0)
    throw_h5_error(ErrorKind::kInternal, file_path_, "", "cannot close the file (disk full?)");
}

// ---- H5Dataset
// ------------------------------------------------------------------------------------

DType H5Dataset::dtype() const {
  H5Handle type = h5_check_id(H5Dget_type(id()), H5Tclose, ErrorKind::kUser, file_path_, name_,
                              "cannot read the element type");
  return h5_dtype_of(type.get(), file_path_, name_);
}

std::string H5Dataset::type_description() const {
  H5Handle type = h5_check_id(H5Dget_type(id()), H5Tclose, ErrorKind::kUser, file_path_, name_,
                              "cannot read the element type");
  return h5_describe_type(type.get());
}

std::vector<uint64_t> H5Dataset::shape() const {
  H5Handle space = h5_check_id(H5Dget_space(id()), H5Sclose, ErrorKind::kUser, file_path_, name_,
                               "cannot read the shape");
  int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail(ErrorKind::kUser, "cannot read the rank");
  std::vector<hsize_t> dims(rank);
  if (rank > 0 && H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) < 0)
    fail(ErrorKind::kUser, "cannot read the shape");
  return std::vector<uint64_t>(dims.begin(), dims.end());
}

int H5Dataset::rank() const { return static_cast<int>(shape().size()); }

uint64_t H5Dataset::rows() const {
  std::vector<uint64_t> s = shape();
  if (s.empty()) fail(ErrorKind::kUser, "expected an array, found a scalar");
  return s[0];
}

uint64_t H5Dataset::row_size() const {
  std::vector<uint64_t> s = shape();
  uint64_t n = 1;
  for (size_t i = 1; i < s.size(); ++i) n *= s[i];
  return n;
}

uint64_t H5Dataset::chunk_rows() const {
  H5Handle dcpl = h5_check_id(H5Dget_create_plist(id()), H5Pclose, ErrorKind::kUser, file_path_,
                              name_, "cannot read the creation properties");
  if (H5Pget_layout(dcpl.get()) != H5D_CHUNKED) return 0;
  int rank = H5Pget_chunk(dcpl.get(), 0, nullptr);
  if (rank <= 0) return 0;
  std::vector<hsize_t> chunk(rank);
  if (H5Pget_chunk(dcpl.get(), rank, chunk.data()) < 0) fail(ErrorKind::kUser, "H5Pget_chunk");
  return chunk[0];
}

bool H5Dataset::is_extendable() const {
  H5Handle space = h5_check_id(H5Dget_space(id()), H5Sclose, ErrorKind::kUser, file_path_, name_,
                               "cannot read the shape");
  int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank <= 0) return false;
  std::vector<hsize_t> dims(rank), max_dims(rank);
  if (H5Sget_simple_extent_dims(space.get(), dims.data(), max_dims.data()) < 0)
    fail(ErrorKind::kUser, "cannot read the shape");
  return max_dims[0] == H5S_UNLIMITED;
}

bool H5Dataset::is_compressed() const {
  H5Handle dcpl = h5_check_id(H5Dget_create_plist(id()), H5Pclose, ErrorKind::kUser, file_path_,
                              name_, "cannot read the creation properties");
  int n = H5Pget_nfilters(dcpl.get());
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0, config = 0;
    size_t n_values = 0;
    if (H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &n_values, nullptr, 0, nullptr,
                       &config) == H5Z_FILTER_DEFLATE)
      return true;
  }
  return false;
}

uint64_t H5Dataset::checked_rows(size_t elements) const {
  uint64_t per_row = row_size();
  if (per_row == 0) {
    REFINERY_CHECK(elements == 0, name_, " has empty rows but ", elements, " values were given");
    return 0;
  }
  REFINERY_CHECK(elements % per_row == 0, elements, " values are not a whole number of rows of ",
                 per_row, " for ", name_, " in ", file_path_);
  return elements / per_row;
}

void H5Dataset::transfer_check(DType mem_dtype, bool writing) const {
  DType stored = dtype();
  if (writing) {
    if (!h5_lossless_conversion(mem_dtype, stored))
      throw_internal_error("cannot write ", h5_dtype_label(mem_dtype), " values to ", name_, " in ",
                           file_path_, ", which stores ", h5_dtype_label(stored));
  } else if (!h5_lossless_conversion(stored, mem_dtype)) {
    throw_user_error(name_, " in ", file_path_, " stores ", h5_dtype_label(stored), ", expected ",
                     h5_dtype_label(mem_dtype),
                     (h5_lossless_conversion(mem_dtype, stored) ? " (a narrower type)" : ""),
                     "; rewrite it with dtype ", h5_dtype_label(mem_dtype));
  }
}

void H5Dataset::append(const void* data, DType mem_dtype, uint64_t rows) {
  write_rows(this->rows(), data, mem_dtype, rows);
}

void H5Dataset::write_rows(uint64_t begin, const void* data, DType mem_dtype, uint64_t count) {
  h5_silence_errors();
  if (count == 0) return;
  transfer_check(mem_dtype, /*writing=*/true);
  std::vector<uint64_t> s = shape();
  REFINERY_CHECK(!s.empty(), "cannot write rows of scalar ", name_);
  REFINERY_CHECK(begin <= std::numeric_limits<uint64_t>::max() - count, "row range overflows");
  const ErrorKind k = ErrorKind::kInternal;
  std::vector<hsize_t> dims(s.begin(), s.end());
  if (begin + count > dims[0]) {
    dims[0] = begin + count;
    h5_check(H5Dset_extent(id(), dims.data()), k, file_path_, name_,
             str("cannot grow the dataset to ", dims[0], " rows"));
  }
  const auto [file_space, mem_space] =
      row_spaces(id(), s, begin, count, k, file_path_, name_, "write");
  H5Handle mem_type = h5_memory_type(mem_dtype);
  h5_check(H5Dwrite(id(), mem_type.get(), mem_space.get(), file_space.get(), H5P_DEFAULT, data), k,
           file_path_, name_,
           str("cannot write rows [", begin, ", ", begin + count, ") (disk full?)"));
}

void H5Dataset::read_rows(uint64_t begin, uint64_t count, DType mem_dtype, void* out) const {
  h5_silence_errors();
  transfer_check(mem_dtype, /*writing=*/false);
  std::vector<uint64_t> s = shape();
  if (s.empty()) fail(ErrorKind::kUser, "expected an array, found a scalar");
  if (begin > s[0] || count > s[0] - begin) {
    throw_user_error("rows [", begin, ", ", begin + count, ") of ", name_, " in ", file_path_,
                     " are out of range: it has ", s[0], " rows");
  }
  if (count == 0) return;
  const ErrorKind k = ErrorKind::kUser;
  const auto [file_space, mem_space] =
      row_spaces(id(), s, begin, count, k, file_path_, name_, "read");
  H5Handle mem_type = h5_memory_type(mem_dtype);
  h5_check(H5Dread(id(), mem_type.get(), mem_space.get(), file_space.get(), H5P_DEFAULT, out), k,
           file_path_, name_,
           str("cannot read rows [", begin, ", ", begin + count,
               ") (is the file truncated or corrupt?)"));
}

void H5Dataset::resize(uint64_t new_rows) {
  h5_silence_errors();
  std::vector<uint64_t> s = shape();
  REFINERY_CHECK(!s.empty(), "cannot resize scalar ", name_);
  if (new_rows > s[0] && !is_extendable())
    fail(ErrorKind::kInternal, str("cannot grow a fixed-size dataset to ", new_rows, " rows"));
  std::vector<hsize_t> dims(s.begin(), s.end());
  dims[0] = new_rows;
  h5_check(H5Dset_extent(id(), dims.data()), ErrorKind::kInternal, file_path_, name_,
           str("cannot resize the dataset to ", new_rows, " rows"));
}

}  // namespace refinery::io
