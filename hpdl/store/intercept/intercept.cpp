// libhpdl_intercept.so: an LD_PRELOAD shim that shows a packed store as a read-only
// folder to unmodified programs (cat, python3, PyTorch data loaders), so millions of
// small-file opens never reach the shared file system (the idea of TACC's FanStore).
//   HPDL_STORE=/local/store HPDL_MOUNT=/hpdl/data LD_PRELOAD=libhpdl_intercept.so prog
// Paths under HPDL_MOUNT are served from the store; every other call goes to libc
// (dlsym RTLD_NEXT) untouched. Limits are listed in docs/store.md.
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "hpdl/store/reader.h"

namespace {

using hpdl::store::Reader;

// Resolves the next definition of a libc function once (thread-safe static init).
#define REAL(name)                                                                        \
  ([]() {                                                                                 \
    static auto fn = reinterpret_cast<decltype(&::name)>(dlsym(RTLD_NEXT, #name));       \
    return fn;                                                                            \
  }())
#define REAL_AS(type, name)                                                               \
  ([]() {                                                                                 \
    static auto fn = reinterpret_cast<type>(dlsym(RTLD_NEXT, #name));                     \
    return fn;                                                                            \
  }())

constexpr int kMaxFd = 1 << 16;
constexpr dev_t kFakeDev = 0x48504443;  // "HPDC"

// An open file or folder of the mount (an open file description). Its fd number is
// a real fd (on /dev/null), reserved so no other open can reuse the number while
// ours lives. dup/dup2/dup3/fcntl(F_DUPFD) give it more fd numbers: they share
// the offset, as POSIX says duplicates do, and the last close frees it.
struct OpenFile {
  bool is_dir = false;
  size_t entry = 0;            // when !is_dir
  std::string path;            // store-relative path ("" = mount root)
  std::string ancestor;        // else: a missing folder above the mount, by its absolute path ("/hpdl")
  std::vector<std::byte> decoded;  // a compressed entry, decompressed once at open
  std::mutex mu;
  uint64_t pos = 0;
  std::atomic<int> refs{1};  // fd numbers naming it
};

void release(OpenFile* f) {
  if (f && f->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete f;
}

struct FakeDir {
  int fd = -1;
  std::string path;
  std::vector<hpdl::store::DirEntry> children;  // "." and ".." first
  size_t next = 0;
  dirent ent{};
  dirent64 ent64{};
};

struct Counters {
  std::atomic<uint64_t> mount_opens{0}, mount_stats{0}, mount_reads{0}, mount_dirs{0}, mount_maps{0},
      mount_maps_in_place{0};
  std::atomic<uint64_t> other_opens{0}, other_stats{0};
};

struct State {
  bool active = false;
  std::string mount;  // normalized, no trailing '/'
  std::unique_ptr<Reader> reader;  // null when the store failed to open (mount paths then give EIO)
  struct stat index_stat {};
  std::atomic<OpenFile*> fds[kMaxFd] = {};
  std::mutex dirs_mu;
  std::unordered_set<void*> dirs;
  Counters counts;
  bool print_stats = false;
  int null_fd = -1;  // O_RDONLY on /dev/null: what fake fds are duplicated from
};

State* g_state = nullptr;
std::once_flag g_once;
thread_local bool t_in_init = false;

// Lexical normalization of an absolute path: collapses "//", "." and "..".
std::string normalize(std::string_view p) {
  std::vector<std::string_view> parts;
  size_t i = 0;
  while (i < p.size()) {
    while (i < p.size() && p[i] == '/') ++i;
    size_t j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    std::string_view c = p.substr(i, j - i);
    if (c == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!c.empty() && c != ".") {
      parts.push_back(c);
    }
    i = j;
  }
  std::string out;
  for (auto c : parts) {
    out += '/';
    out += c;
  }
  return out.empty() ? "/" : out;
}

void report(const std::string& msg) {
  std::string line = "hpdl_intercept: " + msg + "\n";
  ssize_t ignored = ::write(2, line.data(), line.size());
  (void)ignored;
}

void print_stats() {
  if (!g_state || !g_state->print_stats) return;
  const Counters& c = g_state->counts;
  std::string line = "hpdl_intercept stats: mount_opens=" + std::to_string(c.mount_opens) +
                     " mount_stats=" + std::to_string(c.mount_stats) + " mount_reads=" +
                     std::to_string(c.mount_reads) + " mount_dirs=" + std::to_string(c.mount_dirs) +
                     " mount_maps=" + std::to_string(c.mount_maps) +
                     " mount_maps_in_place=" + std::to_string(c.mount_maps_in_place) + " passthrough_opens=" + std::to_string(c.other_opens) +
                     " passthrough_stats=" + std::to_string(c.other_stats) + "\n";
  ssize_t ignored = ::write(2, line.data(), line.size());
  (void)ignored;
}

void init() {
  t_in_init = true;
  auto* s = new State();
  const char* store = std::getenv("HPDL_STORE");
  const char* mount = std::getenv("HPDL_MOUNT");
  s->print_stats = std::getenv("HPDL_INTERCEPT_STATS") != nullptr;
  if (store && *store) {
    const char* m = mount && *mount ? mount : "/hpdl/data";
    s->mount = normalize(m);
    s->active = m[0] == '/' && s->mount != "/";
    if (!s->active) report(std::string("HPDL_MOUNT=") + m + " is refused (give an absolute folder other than /); interception is off");
    try {
      hpdl::store::ReaderOptions opts;
      if (const char* v = std::getenv("HPDL_VERIFY")) {
        std::string_view m(v);
        opts.verify = m == "always" ? hpdl::store::Verify::always
                      : m == "never" ? hpdl::store::Verify::never
                                     : hpdl::store::Verify::first_read;
      }
      opts.allow_missing_partitions = true;
      s->null_fd = REAL_AS(int (*)(const char*, int, ...), open)("/dev/null", O_RDONLY | O_CLOEXEC);
      s->reader = std::make_unique<Reader>(Reader::open(store, opts));
      REAL(stat)((std::string(store) + "/" + hpdl::store::kIndexName).c_str(), &s->index_stat);
    } catch (const std::exception& e) {
      report(std::string(e.what()) + "; reads under " + s->mount + " fail with EIO");
    }
  }
  g_state = s;
  if (s->print_stats) std::atexit(print_stats);
  t_in_init = false;
}

State* state() {
  if (t_in_init) return nullptr;
  std::call_once(g_once, init);
  return g_state;
}

OpenFile* fake(int fd) {
  if (fd < 0 || fd >= kMaxFd || !g_state) return nullptr;
  return g_state->fds[fd].load(std::memory_order_acquire);
}

// If `path` (relative to dirfd when not absolute) lies under the mount, stores its
// store-relative path in `rel` and returns true.
bool under_mount(int dirfd, const char* path, std::string& rel) {
  if (!path) return false;
  State* s = state();
  if (!s || !s->active) return false;
  std::string abs;
  if (path[0] == '/') {
    // Fast rejection: most paths share no prefix with the mount and have no "..".
    if (std::strncmp(path, s->mount.c_str(), s->mount.size()) != 0 && !std::strstr(path, "/.") &&
        !std::strstr(path, "//"))
      return false;
    abs = normalize(path);
  } else if (OpenFile* f = (dirfd == AT_FDCWD ? nullptr : fake(dirfd)); f && f->is_dir) {
    abs = normalize((f->ancestor.empty() ? s->mount + "/" + f->path : f->ancestor) + "/" + path);
  } else {
    return false;  // relative to a real folder: the process cannot chdir into the mount
  }
  if (abs == s->mount) {
    rel.clear();
    return true;
  }
  if (abs.size() > s->mount.size() && abs.compare(0, s->mount.size(), s->mount) == 0 &&
      abs[s->mount.size()] == '/') {
    rel = abs.substr(s->mount.size() + 1);
    return true;
  }
  return false;
}

int fail(int err) {
  errno = err;
  return -1;
}

// Looks `rel` up: 1 = file (entry set), 2 = folder, 0 = absent, -1 = store unusable.
int lookup(const std::string& rel, size_t& entry) {
  Reader* r = g_state->reader.get();
  if (!r) return -1;
  if (auto i = r->find(rel)) {
    entry = *i;
    return 1;
  }
  return r->is_dir(rel) ? 2 : 0;
}

void fill_stat(struct stat* st, int kind, size_t entry, const std::string& rel) {
  std::memset(st, 0, sizeof *st);
  st->st_dev = kFakeDev;
  st->st_uid = ::getuid();
  st->st_gid = ::getgid();
  st->st_blksize = 4096;
  st->st_atim = g_state->index_stat.st_mtim;
  st->st_mtim = g_state->index_stat.st_mtim;
  st->st_ctim = g_state->index_stat.st_mtim;
  if (kind == 1) {
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_ino = entry + 2;
    st->st_size = off_t(g_state->reader->entry(entry).size);
    st->st_blocks = (st->st_size + 511) / 512;
  } else {
    st->st_mode = S_IFDIR | 0555;
    st->st_nlink = 2;
    st->st_ino = rel.empty() ? 1 : (std::hash<std::string>{}(rel) | (uint64_t{1} << 62));
    st->st_size = 4096;
    st->st_blocks = 8;
  }
}

int stat_mount(const std::string& rel, struct stat* st) {
  g_state->counts.mount_stats++;
  size_t entry = 0;
  int kind = lookup(rel, entry);
  if (kind < 0) return fail(EIO);
  if (kind == 0) return fail(ENOENT);
  fill_stat(st, kind, entry, rel);
  return 0;
}

int stat_fake(OpenFile* f, struct stat* st) {
  g_state->counts.mount_stats++;
  fill_stat(st, f->is_dir ? 2 : 1, f->entry, f->ancestor.empty() ? f->path : f->ancestor);
  return 0;
}

int install(std::unique_ptr<OpenFile> f, int flags);

int open_mount(const std::string& rel, int flags) {
  State* s = g_state;
  s->counts.mount_opens++;
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC | O_APPEND)) != 0) return fail(EROFS);
  size_t entry = 0;
  int kind = lookup(rel, entry);
  if (kind < 0) return fail(EIO);
  if (kind == 0) return fail(ENOENT);
  if (kind == 1 && (flags & O_DIRECTORY)) return fail(ENOTDIR);
  auto f = std::make_unique<OpenFile>();
  f->is_dir = kind == 2;
  f->entry = entry;
  f->path = rel;
  if (kind == 1 && s->reader->entry(entry).compression != hpdl::store::Compression::none) {
    try {
      f->decoded = s->reader->read(entry);
    } catch (const std::exception& e) {
      report(e.what());
      return fail(EIO);
    }
  }
  return install(std::move(f), flags);
}

// A missing folder above the mount (absolute, normalized `abs`), opened as a folder:
// fstat, fdopendir (its one child on the way to the mount) and *at calls relative to it
// work, so walks from it (find, fts, os.walk with dir_fd) reach the mount.
int open_ancestor(const std::string& abs, int flags) {
  g_state->counts.mount_opens++;
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC | O_APPEND)) != 0) return fail(EISDIR);
  auto f = std::make_unique<OpenFile>();
  f->is_dir = true;
  f->ancestor = abs;
  return install(std::move(f), flags);
}

// Gives `f` an fd number of its own. Returns it, or -1 with errno set.
int install(std::unique_ptr<OpenFile> f, int flags) {
  State* s = g_state;
  // Duplicating a /dev/null fd kept open since init reserves a number without a path walk.
  int fd = s->null_fd >= 0 ? REAL_AS(int (*)(int, int, ...), fcntl)(s->null_fd, (flags & O_CLOEXEC) ? F_DUPFD_CLOEXEC : F_DUPFD, 0)
                           : -1;
  if (fd < 0)  // the program closed our /dev/null fd (or init could not open it)
    fd = REAL_AS(int (*)(const char*, int, ...), open)("/dev/null", O_RDONLY | (flags & O_CLOEXEC));
  if (fd < 0) return -1;
  if (fd >= kMaxFd) {
    REAL(close)(fd);
    return fail(EMFILE);
  }
  s->fds[fd].store(f.release(), std::memory_order_release);
  return fd;
}

ssize_t read_fake(OpenFile* f, void* buf, size_t n, uint64_t offset, bool advance) {
  if (f->is_dir) return fail(EISDIR);
  g_state->counts.mount_reads++;
  std::unique_lock<std::mutex> lock(f->mu, std::defer_lock);
  if (advance) {
    lock.lock();
    offset = f->pos;
  }
  size_t got = 0;
  if (!f->decoded.empty()) {
    if (offset < f->decoded.size()) {
      got = std::min<uint64_t>(n, f->decoded.size() - offset);
      std::memcpy(buf, f->decoded.data() + offset, got);
    }
  } else {
    try {
      got = g_state->reader->read_at(f->entry, offset, {static_cast<std::byte*>(buf), n});
    } catch (const std::exception& e) {
      report(e.what());
      return fail(EIO);
    }
  }
  if (advance) f->pos = offset + got;
  return ssize_t(got);
}

off_t seek_fake(OpenFile* f, off_t off, int whence) {
  std::lock_guard<std::mutex> lock(f->mu);
  const off_t size = f->is_dir ? 0 : off_t(g_state->reader->entry(f->entry).size);
  off_t base = 0;
  switch (whence) {
    case SEEK_SET: base = 0; break;
    case SEEK_CUR: base = off_t(f->pos); break;
    case SEEK_END: base = size; break;
    case SEEK_DATA:
      if (off >= size) return fail(ENXIO);
      return off_t(f->pos = uint64_t(off));
    case SEEK_HOLE:
      if (off >= size) return fail(ENXIO);
      return off_t(f->pos = uint64_t(size));
    default: return fail(EINVAL);
  }
  if (base + off < 0) return fail(EINVAL);
  f->pos = uint64_t(base + off);
  return off_t(f->pos);
}

int close_fake(int fd) {
  release(g_state->fds[fd].exchange(nullptr, std::memory_order_acq_rel));
  return REAL(close)(fd);
}

// After a real dup of fd `from` onto `to` succeeded: `to` now names what `from`
// names (nothing when `from` is not ours), and whatever `to` named before, the
// dup closed. Returns `to`.
int after_dup(int from, int to) {
  if (!g_state || to < 0) return to;
  OpenFile* f = fake(from);
  if (to >= kMaxFd) {
    if (!f) return to;
    REAL(close)(to);  // a number our table cannot hold
    return fail(EMFILE);
  }
  if (f) f->refs.fetch_add(1, std::memory_order_acq_rel);
  release(g_state->fds[to].exchange(f, std::memory_order_acq_rel));
  return to;
}

// Fills [p, p + len) with the file's bytes from `off` on (zeros past its end), then
// gives it protection `prot`. False (errno set) when a read or mprotect fails.
bool fill_copy(OpenFile* f, void* p, size_t len, int prot, uint64_t off, uint64_t size) {
  if (off < size) {
    const size_t want = size_t(std::min<uint64_t>(len, size - off));
    if (read_fake(f, p, want, off, false) != ssize_t(want)) return fail(EIO), false;
  }
  return prot == (PROT_READ | PROT_WRITE) || ::mprotect(p, len, prot) == 0;
}

// mmap of a store file. An uncompressed entry that starts on a page of its partition
// file (the packer aligns large files: PackOptions::align_min_bytes) is mapped in
// place from the partition, so processes share its page cache; the last, partial
// page is a copy, so bytes past the end of the file read as zeros. Any other entry
// gets an anonymous private mapping filled with its bytes: a copy, read at map time.
// Both are verified as read() is. Whole pages past the end of the file read as zeros
// (a file mapping would raise SIGBUS there).
void* mmap_fake(OpenFile* f, void* addr, size_t len, int prot, int flags, off64_t off) {
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  const int type = flags & MAP_TYPE;
  if (f->is_dir) return fail(ENODEV), MAP_FAILED;
  if (len == 0 || off < 0 || uint64_t(off) % page != 0 ||
      (type != MAP_PRIVATE && type != MAP_SHARED && type != MAP_SHARED_VALIDATE))
    return fail(EINVAL), MAP_FAILED;
  if (type != MAP_PRIVATE && (prot & PROT_WRITE)) return fail(EACCES), MAP_FAILED;  // opened read-only
  g_state->counts.mount_maps++;
  const int keep = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_NORESERVE | MAP_LOCKED | MAP_POPULATE);
  Reader& r = *g_state->reader;
  const hpdl::store::Entry& e = r.entry(f->entry);
  const uint64_t size = f->decoded.empty() ? e.size : f->decoded.size();
  const uint64_t at = hpdl::store::kHeaderSize + e.offset + uint64_t(off);  // in the partition file
  const uint64_t whole = uint64_t(off) < size ? (size - uint64_t(off)) / page * page : 0;  // full pages of data
  if (f->decoded.empty() && e.compression == hpdl::store::Compression::none && at % page == 0 && whole > 0) {
    try {
      (void)r.view(f->entry);  // the checksum check read() makes
    } catch (const std::exception& ex) {
      report(ex.what());
      return fail(EIO), MAP_FAILED;
    }
    const std::string part = (r.dir() / hpdl::store::partition_name(e.partition)).string();
    const int pfd = REAL_AS(int (*)(const char*, int, ...), open)(part.c_str(), O_RDONLY | O_CLOEXEC);
    if (pfd >= 0) {
      void* p = REAL(mmap)(addr, len, prot, (type == MAP_PRIVATE ? MAP_PRIVATE : MAP_SHARED) | keep, pfd, off_t(at));
      REAL(close)(pfd);
      if (p != MAP_FAILED) {
        if (len > whole) {  // the partial last page and beyond: a copy over the partition's next bytes
          char* tail = static_cast<char*>(p) + whole;
          const size_t n = len - size_t(whole);
          if (REAL(mmap)(tail, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
                  MAP_FAILED ||
              !fill_copy(f, tail, n, prot, uint64_t(off) + whole, size)) {
            const int err = errno;
            ::munmap(p, len);
            return fail(err), MAP_FAILED;
          }
        }
        g_state->counts.mount_maps_in_place++;
        return p;
      }
    }
    // The partition could not be opened or mapped: fall back to a copy.
  }
  void* p = REAL(mmap)(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | keep, -1, 0);
  if (p == MAP_FAILED) return p;
  if (!fill_copy(f, p, len, prot, uint64_t(off), size)) {
    const int err = errno;
    ::munmap(p, len);
    return fail(err), MAP_FAILED;
  }
  return p;
}

FakeDir* fake_dir(void* d) {
  if (!g_state || !d) return nullptr;
  std::lock_guard<std::mutex> lock(g_state->dirs_mu);
  return g_state->dirs.count(d) ? static_cast<FakeDir*>(d) : nullptr;
}

bool mount_ancestor(const char* path);

// The listing of a folder above the mount, by its absolute path: ".", ".." and the next folder.
std::vector<hpdl::store::DirEntry> ancestor_children(const std::string& abs) {
  const std::string& m = g_state->mount;
  const size_t from = abs == "/" ? 1 : abs.size() + 1, to = m.find('/', from);
  return {{".", true}, {"..", true}, {m.substr(from, to == std::string::npos ? std::string::npos : to - from), true}};
}

// A missing folder above the mount ("/hpdl" for /hpdl/data), opened by path: its listing.
// Its fd is a plain /dev/null copy (-1 if none).
DIR* opendir_ancestor(const char* path) {
  const std::string abs = normalize(path);
  auto d = std::make_unique<FakeDir>();
  d->fd = g_state->null_fd >= 0
              ? REAL_AS(int (*)(int, int, ...), fcntl)(g_state->null_fd, F_DUPFD_CLOEXEC, 0)
              : -1;
  d->path = abs;
  d->children = ancestor_children(abs);
  g_state->counts.mount_dirs++;
  std::lock_guard<std::mutex> lock(g_state->dirs_mu);
  g_state->dirs.insert(d.get());
  return reinterpret_cast<DIR*>(d.release());
}

DIR* opendir_fake(int fd) {
  OpenFile* f = fake(fd);
  auto d = std::make_unique<FakeDir>();
  d->fd = fd;
  if (!f->ancestor.empty()) {
    d->path = f->ancestor;
    d->children = ancestor_children(f->ancestor);
  } else {
    d->path = f->path;
    d->children.push_back({".", true});
    d->children.push_back({"..", true});
    if (auto kids = g_state->reader->list_dir(f->path))
      d->children.insert(d->children.end(), kids->begin(), kids->end());
  }
  g_state->counts.mount_dirs++;
  std::lock_guard<std::mutex> lock(g_state->dirs_mu);
  g_state->dirs.insert(d.get());
  return reinterpret_cast<DIR*>(d.release());
}

template <typename Dirent>
Dirent* next_dirent(FakeDir* d, Dirent& ent) {
  while (d->next < d->children.size()) {
    const auto& c = d->children[d->next++];
    if (c.name.size() >= sizeof ent.d_name) continue;  // cannot be represented
    std::memset(&ent, 0, sizeof ent);
    ent.d_ino = std::hash<std::string>{}(d->path + "/" + c.name) | 1;
    ent.d_off = static_cast<decltype(ent.d_off)>(d->next);
    ent.d_reclen = sizeof ent;
    ent.d_type = c.is_dir ? DT_DIR : DT_REG;
    std::memcpy(ent.d_name, c.name.c_str(), c.name.size() + 1);
    return &ent;
  }
  return nullptr;
}

// fopencookie callbacks: the cookie is the fake fd.
ssize_t cookie_read(void* c, char* buf, size_t n) {
  OpenFile* f = fake(int(reinterpret_cast<intptr_t>(c)));
  return f ? read_fake(f, buf, n, 0, true) : fail(EBADF);
}
int cookie_seek(void* c, off64_t* off, int whence) {
  OpenFile* f = fake(int(reinterpret_cast<intptr_t>(c)));
  if (!f) return fail(EBADF);
  off_t r = seek_fake(f, off_t(*off), whence);
  if (r < 0) return -1;
  *off = r;
  return 0;
}
int cookie_close(void* c) { return close_fake(int(reinterpret_cast<intptr_t>(c))); }

FILE* fopen_mount(const std::string& rel, const char* mode) {
  if (std::strpbrk(mode, "wa+")) {
    g_state->counts.mount_opens++;
    errno = EROFS;
    return nullptr;
  }
  int fd = open_mount(rel, O_RDONLY | (std::strchr(mode, 'e') ? O_CLOEXEC : 0));
  if (fd < 0) return nullptr;
  cookie_io_functions_t io{cookie_read, nullptr, cookie_seek, cookie_close};
  FILE* fp = fopencookie(reinterpret_cast<void*>(intptr_t(fd)), "r", io);
  if (!fp) close_fake(fd);
  return fp;
}

int mode_arg(int flags, va_list ap) { return (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, int) : 0; }

// A call relative to an open folder above the mount (its fd is a /dev/null copy) goes by
// absolute path: (dirfd, path) becomes (AT_FDCWD, its absolute path, kept in `storage`).
void through_ancestor(int& dirfd, const char*& path, std::string& storage) {
  if (dirfd == AT_FDCWD || !path || path[0] == '/' || path[0] == '\0') return;
  OpenFile* f = fake(dirfd);
  if (!f || f->ancestor.empty()) return;
  storage = normalize(f->ancestor + "/" + path);
  dirfd = AT_FDCWD;
  path = storage.c_str();
}

int do_openat(int dirfd, const char* path, int flags, int mode) {
  std::string rel, abs;
  through_ancestor(dirfd, path, abs);
  if (under_mount(dirfd, path, rel)) return open_mount(rel, flags);
  if (g_state) g_state->counts.other_opens++;
  const int fd = REAL_AS(int (*)(int, const char*, int, ...), openat)(dirfd, path, flags, mode);
  if (fd >= 0 || errno != ENOENT || !mount_ancestor(path)) return fd;
  return open_ancestor(normalize(path), flags);  // a missing folder above the mount (find /hpdl)
}

// True when absolute `path` names a folder above the mount ("/hpdl" for /hpdl/data).
// Where such a folder does not exist on the real file system, stat shows it as an
// empty read-only folder and readlink as no link, so walks from the root (realpath
// -e, readlink -f, Python's Path.resolve(strict=True)) reach the mount.
bool mount_ancestor(const char* path) {
  State* s = state();
  if (!s || !s->active || !path || path[0] != '/') return false;
  const std::string abs = normalize(path);
  if (abs == "/") return false;  // the real root always exists
  return s->mount.size() > abs.size() && s->mount.compare(0, abs.size(), abs) == 0 && s->mount[abs.size()] == '/';
}

// For an absolute `path` that passes through a missing folder above the mount
// ("/hpdl/.." for /hpdl/data, when /hpdl does not exist), which the kernel cannot
// walk: its lexical normalization, which the real call gets instead. Else empty.
std::string beside_mount(const char* path) {
  if (!path || path[0] != '/') return {};
  std::string abs = normalize(path);
  const char* end = std::strchr(path + 1, '/');
  const std::string top(path, end ? size_t(end - path) : std::strlen(path));  // "/hpdl"
  struct stat ignored {};
  if (abs == path || !mount_ancestor(top.c_str()) || REAL(fstatat)(AT_FDCWD, top.c_str(), &ignored, 0) == 0) return {};
  return abs;
}

// After a real stat of `path` failed with ENOENT: a folder above the mount is shown
// as a folder, a path through one is looked up as beside_mount says. 1: neither.
int stat_beside_mount(const char* path, struct stat* st, int flags) {
  if (mount_ancestor(path)) {
    fill_stat(st, 2, 0, normalize(path));
    return 0;
  }
  const std::string abs = beside_mount(path);
  return abs.empty() ? 1 : REAL(fstatat)(AT_FDCWD, abs.c_str(), st, flags);
}

int do_stat_at(int dirfd, const char* path, struct stat* st, int flags) {
  std::string rel, abs;
  through_ancestor(dirfd, path, abs);
  if (path && path[0] == '\0' && (flags & AT_EMPTY_PATH)) {
    if (OpenFile* f = fake(dirfd)) return stat_fake(f, st);
  } else if (under_mount(dirfd, path, rel)) {
    return stat_mount(rel, st);
  }
  if (g_state) g_state->counts.other_stats++;
  const int rc = REAL(fstatat)(dirfd, path, st, flags);
  if (rc == 0 || errno != ENOENT) return rc;
  const int again = stat_beside_mount(path, st, flags);
  if (again == 1) errno = ENOENT;
  return again == 1 ? -1 : again;
}

// realpath of a mount path: the lexically normalized path, when it is in the store
// (the store holds no symbolic links).
char* realpath_mount(const std::string& rel, char* resolved) {
  size_t entry = 0;
  const int kind = lookup(rel, entry);
  g_state->counts.mount_stats++;
  if (kind <= 0) return fail(kind < 0 ? EIO : ENOENT), nullptr;
  const std::string abs = rel.empty() ? g_state->mount : g_state->mount + "/" + rel;
  if (abs.size() >= PATH_MAX) return fail(ENAMETOOLONG), nullptr;
  char* out = resolved ? resolved : static_cast<char*>(std::malloc(abs.size() + 1));
  if (!out) return fail(ENOMEM), nullptr;
  std::memcpy(out, abs.c_str(), abs.size() + 1);
  return out;
}

// readlink of a mount path: nothing in the store is a link.
ssize_t readlink_mount(const std::string& rel) {
  size_t entry = 0;
  const int kind = lookup(rel, entry);
  g_state->counts.mount_stats++;
  return fail(kind < 0 ? EIO : kind == 0 ? ENOENT : EINVAL);
}

int refuse_write(const char* path) {
  std::string rel;
  return under_mount(AT_FDCWD, path, rel) ? 1 : 0;
}

}  // namespace

extern "C" {

// ---- open ----
int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  int mode = mode_arg(flags, ap);
  va_end(ap);
  return do_openat(AT_FDCWD, path, flags, mode);
}
int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  int mode = mode_arg(flags, ap);
  va_end(ap);
  return do_openat(AT_FDCWD, path, flags | O_LARGEFILE, mode);
}
int openat(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  int mode = mode_arg(flags, ap);
  va_end(ap);
  return do_openat(dirfd, path, flags, mode);
}
int openat64(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  int mode = mode_arg(flags, ap);
  va_end(ap);
  return do_openat(dirfd, path, flags | O_LARGEFILE, mode);
}
int __open_2(const char* path, int flags) { return do_openat(AT_FDCWD, path, flags, 0); }
int __open64_2(const char* path, int flags) { return do_openat(AT_FDCWD, path, flags | O_LARGEFILE, 0); }
int __openat_2(int dirfd, const char* path, int flags) { return do_openat(dirfd, path, flags, 0); }
int __openat64_2(int dirfd, const char* path, int flags) { return do_openat(dirfd, path, flags | O_LARGEFILE, 0); }
int creat(const char* path, mode_t mode) { return do_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, int(mode)); }
int creat64(const char* path, mode_t mode) {
  return do_openat(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC | O_LARGEFILE, int(mode));
}

// ---- read / seek / close ----
ssize_t read(int fd, void* buf, size_t n) {
  if (OpenFile* f = fake(fd)) return read_fake(f, buf, n, 0, true);
  return REAL(read)(fd, buf, n);
}
ssize_t __read_chk(int fd, void* buf, size_t n, size_t buflen) {
  if (n > buflen) std::abort();  // what glibc's fortify check does
  return read(fd, buf, n);
}
ssize_t pread(int fd, void* buf, size_t n, off_t off) {
  if (OpenFile* f = fake(fd)) return off < 0 ? fail(EINVAL) : read_fake(f, buf, n, uint64_t(off), false);
  return REAL(pread)(fd, buf, n, off);
}
ssize_t pread64(int fd, void* buf, size_t n, off64_t off) {
  if (OpenFile* f = fake(fd)) return off < 0 ? fail(EINVAL) : read_fake(f, buf, n, uint64_t(off), false);
  return REAL(pread64)(fd, buf, n, off);
}
ssize_t __pread_chk(int fd, void* buf, size_t n, off_t off, size_t buflen) {
  if (n > buflen) std::abort();
  return pread(fd, buf, n, off);
}
ssize_t __pread64_chk(int fd, void* buf, size_t n, off64_t off, size_t buflen) {
  if (n > buflen) std::abort();
  return pread64(fd, buf, n, off);
}
off_t lseek(int fd, off_t off, int whence) noexcept {
  if (OpenFile* f = fake(fd)) return seek_fake(f, off, whence);
  return REAL(lseek)(fd, off, whence);
}
off64_t lseek64(int fd, off64_t off, int whence) noexcept {
  if (OpenFile* f = fake(fd)) return seek_fake(f, off, whence);
  return REAL(lseek64)(fd, off, whence);
}
int close(int fd) {
  if (fake(fd)) return close_fake(fd);
  return REAL(close)(fd);
}

// ---- duplicates ----
int dup(int fd) noexcept {
  int r = REAL(dup)(fd);
  return r < 0 ? r : after_dup(fd, r);
}
int dup2(int fd, int to) noexcept {
  int r = REAL(dup2)(fd, to);
  return r < 0 || fd == to ? r : after_dup(fd, r);
}
int dup3(int fd, int to, int flags) noexcept {
  int r = REAL(dup3)(fd, to, flags);
  return r < 0 ? r : after_dup(fd, r);
}
// fcntl's third argument is an int, a pointer or absent; passing it on as a pointer
// is what glibc's own wrapper does.
int fcntl_common(int fd, int cmd, void* arg) {
  int r = REAL_AS(int (*)(int, int, ...), fcntl)(fd, cmd, arg);
  if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) return after_dup(fd, r);
  return r;
}
int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return fcntl_common(fd, cmd, arg);
}
int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return fcntl_common(fd, cmd, arg);
}

// ---- memory maps ----
void* mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) noexcept {
  if (OpenFile* f = (flags & MAP_ANONYMOUS) ? nullptr : fake(fd)) return mmap_fake(f, addr, len, prot, flags, off);
  return REAL(mmap)(addr, len, prot, flags, fd, off);
}
void* mmap64(void* addr, size_t len, int prot, int flags, int fd, off64_t off) noexcept {
  if (OpenFile* f = (flags & MAP_ANONYMOUS) ? nullptr : fake(fd)) return mmap_fake(f, addr, len, prot, flags, off);
  return REAL(mmap64)(addr, len, prot, flags, fd, off);
}

// Zero-copy transfers would read /dev/null; EINVAL makes cat & co. fall back to read().
ssize_t copy_file_range(int in, off64_t* pin, int out, off64_t* pout, size_t n, unsigned flags) {
  if (fake(in) || fake(out)) return fail(EINVAL);
  return REAL(copy_file_range)(in, pin, out, pout, n, flags);
}
ssize_t sendfile(int out, int in, off_t* off, size_t n) noexcept {
  if (fake(in) || fake(out)) return fail(EINVAL);
  return REAL(sendfile)(out, in, off, n);
}
ssize_t sendfile64(int out, int in, off64_t* off, size_t n) noexcept {
  if (fake(in) || fake(out)) return fail(EINVAL);
  return REAL(sendfile64)(out, in, off, n);
}
ssize_t splice(int in, off64_t* pin, int out, off64_t* pout, size_t n, unsigned flags) {
  if (fake(in) || fake(out)) return fail(EINVAL);
  return REAL(splice)(in, pin, out, pout, n, flags);
}

// ---- stat family ----
int stat(const char* path, struct stat* st) noexcept { return do_stat_at(AT_FDCWD, path, st, 0); }
int stat64(const char* path, struct stat64* st) noexcept {
  return do_stat_at(AT_FDCWD, path, reinterpret_cast<struct stat*>(st), 0);
}
int lstat(const char* path, struct stat* st) noexcept {
  return do_stat_at(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW);
}
int lstat64(const char* path, struct stat64* st) noexcept {
  return do_stat_at(AT_FDCWD, path, reinterpret_cast<struct stat*>(st), AT_SYMLINK_NOFOLLOW);
}
int fstat(int fd, struct stat* st) noexcept {
  if (OpenFile* f = fake(fd)) return stat_fake(f, st);
  return REAL(fstat)(fd, st);
}
int fstat64(int fd, struct stat64* st) noexcept {
  if (OpenFile* f = fake(fd)) return stat_fake(f, reinterpret_cast<struct stat*>(st));
  return REAL(fstat64)(fd, st);
}
int fstatat(int dirfd, const char* path, struct stat* st, int flags) noexcept {
  return do_stat_at(dirfd, path, st, flags);
}
int fstatat64(int dirfd, const char* path, struct stat64* st, int flags) noexcept {
  return do_stat_at(dirfd, path, reinterpret_cast<struct stat*>(st), flags);
}
// The pre-2.33 glibc entry points, still called by older binaries.
int __xstat(int, const char* path, struct stat* st) { return do_stat_at(AT_FDCWD, path, st, 0); }
int __xstat64(int, const char* path, struct stat* st) { return do_stat_at(AT_FDCWD, path, st, 0); }
int __lxstat(int, const char* path, struct stat* st) { return do_stat_at(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW); }
int __lxstat64(int, const char* path, struct stat* st) {
  return do_stat_at(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW);
}
int __fxstat(int, int fd, struct stat* st) { return fstat(fd, st); }
int __fxstat64(int, int fd, struct stat* st) { return fstat(fd, st); }
int __fxstatat(int, int dirfd, const char* path, struct stat* st, int flags) {
  return do_stat_at(dirfd, path, st, flags);
}
int __fxstatat64(int, int dirfd, const char* path, struct stat* st, int flags) {
  return do_stat_at(dirfd, path, st, flags);
}
int statx(int dirfd, const char* path, int flags, unsigned mask, struct statx* sx) noexcept {
  std::string rel, abs;
  through_ancestor(dirfd, path, abs);
  struct stat st {};
  int rc = 1;
  if (path[0] == '\0' && (flags & AT_EMPTY_PATH)) {
    if (OpenFile* f = fake(dirfd)) rc = stat_fake(f, &st);
  } else if (under_mount(dirfd, path, rel)) {
    rc = stat_mount(rel, &st);
  }
  if (rc == 1) {
    if (g_state) g_state->counts.other_stats++;
    rc = REAL(statx)(dirfd, path, flags, mask, sx);
    if (rc == 0 || errno != ENOENT) return rc;
    rc = stat_beside_mount(path, &st, (flags & AT_SYMLINK_NOFOLLOW) ? AT_SYMLINK_NOFOLLOW : 0);
    if (rc == 1) return fail(ENOENT);
  }
  if (rc != 0) return rc;
  std::memset(sx, 0, sizeof *sx);
  sx->stx_mask = STATX_BASIC_STATS;
  sx->stx_blksize = uint32_t(st.st_blksize);
  sx->stx_nlink = uint32_t(st.st_nlink);
  sx->stx_uid = st.st_uid;
  sx->stx_gid = st.st_gid;
  sx->stx_mode = uint16_t(st.st_mode);
  sx->stx_ino = st.st_ino;
  sx->stx_size = uint64_t(st.st_size);
  sx->stx_blocks = uint64_t(st.st_blocks);
  sx->stx_atime = {st.st_atim.tv_sec, uint32_t(st.st_atim.tv_nsec), 0};
  sx->stx_mtime = {st.st_mtim.tv_sec, uint32_t(st.st_mtim.tv_nsec), 0};
  sx->stx_ctime = sx->stx_mtime;
  sx->stx_dev_major = uint32_t(kFakeDev >> 8);
  sx->stx_dev_minor = uint32_t(kFakeDev & 0xff);
  return 0;
}

// ---- access ----
int faccessat(int dirfd, const char* path, int mode, int flags) noexcept {
  std::string rel, abs;
  through_ancestor(dirfd, path, abs);
  if (under_mount(dirfd, path, rel)) {
    size_t entry = 0;
    int kind = lookup(rel, entry);
    g_state->counts.mount_stats++;
    if (kind < 0) return fail(EIO);
    if (kind == 0) return fail(ENOENT);
    if (mode & W_OK) return fail(EROFS);
    if ((mode & X_OK) && kind == 1) return fail(EACCES);
    return 0;
  }
  if (g_state) g_state->counts.other_stats++;
  const int rc = REAL(faccessat)(dirfd, path, mode, flags);
  if (rc != 0 && errno == ENOENT && mount_ancestor(path)) return (mode & W_OK) ? fail(EROFS) : 0;
  return rc;
}
int access(const char* path, int mode) noexcept { return faccessat(AT_FDCWD, path, mode, 0); }
int euidaccess(const char* path, int mode) noexcept { return faccessat(AT_FDCWD, path, mode, AT_EACCESS); }
int eaccess(const char* path, int mode) noexcept { return faccessat(AT_FDCWD, path, mode, AT_EACCESS); }

// ---- canonical paths (std::filesystem::canonical, readlink -f) ----
char* realpath(const char* path, char* resolved) noexcept {
  std::string rel;
  if (under_mount(AT_FDCWD, path, rel)) return realpath_mount(rel, resolved);
  return REAL(realpath)(path, resolved);
}
char* __realpath_chk(const char* path, char* resolved, size_t resolvedlen) noexcept {
  if (resolved && resolvedlen < PATH_MAX) std::abort();  // what glibc's fortify check does
  return realpath(path, resolved);
}
char* canonicalize_file_name(const char* path) noexcept { return realpath(path, nullptr); }
ssize_t readlinkat(int dirfd, const char* path, char* buf, size_t len) noexcept {
  std::string rel;
  if (under_mount(dirfd, path, rel)) return readlink_mount(rel);
  const ssize_t rc = REAL(readlinkat)(dirfd, path, buf, len);
  return rc < 0 && errno == ENOENT && mount_ancestor(path) ? fail(EINVAL) : rc;
}
ssize_t readlink(const char* path, char* buf, size_t len) noexcept { return readlinkat(AT_FDCWD, path, buf, len); }
ssize_t __readlink_chk(const char* path, char* buf, size_t len, size_t buflen) noexcept {
  if (len > buflen) std::abort();
  return readlinkat(AT_FDCWD, path, buf, len);
}
ssize_t __readlinkat_chk(int dirfd, const char* path, char* buf, size_t len, size_t buflen) noexcept {
  if (len > buflen) std::abort();
  return readlinkat(dirfd, path, buf, len);
}

// ---- folders ----
DIR* opendir(const char* path) {
  std::string rel;
  if (under_mount(AT_FDCWD, path, rel)) {
    int fd = open_mount(rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return nullptr;
    if (!fake(fd)->is_dir) {
      close_fake(fd);
      errno = ENOTDIR;
      return nullptr;
    }
    return opendir_fake(fd);
  }
  DIR* d = REAL(opendir)(path);
  return !d && errno == ENOENT && mount_ancestor(path) ? opendir_ancestor(path) : d;
}
DIR* fdopendir(int fd) {
  if (OpenFile* f = fake(fd)) {
    if (!f->is_dir) {
      errno = ENOTDIR;
      return nullptr;
    }
    return opendir_fake(fd);
  }
  return REAL(fdopendir)(fd);
}
struct dirent* readdir(DIR* dir) {
  if (FakeDir* d = fake_dir(dir)) return next_dirent(d, d->ent);
  return REAL(readdir)(dir);
}
struct dirent64* readdir64(DIR* dir) {
  if (FakeDir* d = fake_dir(dir)) return next_dirent(d, d->ent64);
  return REAL(readdir64)(dir);
}
int closedir(DIR* dir) {
  if (FakeDir* d = fake_dir(dir)) {
    {
      std::lock_guard<std::mutex> lock(g_state->dirs_mu);
      g_state->dirs.erase(d);
    }
    const int rc = fake(d->fd) ? close_fake(d->fd) : d->fd >= 0 ? REAL(close)(d->fd) : 0;
    delete d;
    return rc;
  }
  return REAL(closedir)(dir);
}
int dirfd(DIR* dir) noexcept {
  if (FakeDir* d = fake_dir(dir)) return d->fd;
  return REAL(dirfd)(dir);
}
void rewinddir(DIR* dir) {
  if (FakeDir* d = fake_dir(dir)) {
    d->next = 0;
    return;
  }
  REAL(rewinddir)(dir);
}

// ---- stdio ----
FILE* fopen(const char* path, const char* mode) {
  std::string rel;
  if (under_mount(AT_FDCWD, path, rel)) return fopen_mount(rel, mode);
  if (g_state) g_state->counts.other_opens++;
  return REAL(fopen)(path, mode);
}
FILE* fopen64(const char* path, const char* mode) {
  std::string rel;
  if (under_mount(AT_FDCWD, path, rel)) return fopen_mount(rel, mode);
  if (g_state) g_state->counts.other_opens++;
  return REAL(fopen64)(path, mode);
}

// ---- writes to the mount: read-only file system ----
int mkdir(const char* path, mode_t mode) noexcept {
  return refuse_write(path) ? fail(EROFS) : REAL(mkdir)(path, mode);
}
int mkdirat(int dirfd, const char* path, mode_t mode) noexcept {
  std::string rel;
  return under_mount(dirfd, path, rel) ? fail(EROFS) : REAL(mkdirat)(dirfd, path, mode);
}
int unlink(const char* path) noexcept { return refuse_write(path) ? fail(EROFS) : REAL(unlink)(path); }
int unlinkat(int dirfd, const char* path, int flags) noexcept {
  std::string rel;
  return under_mount(dirfd, path, rel) ? fail(EROFS) : REAL(unlinkat)(dirfd, path, flags);
}
int rmdir(const char* path) noexcept { return refuse_write(path) ? fail(EROFS) : REAL(rmdir)(path); }
int rename(const char* from, const char* to) noexcept {
  return refuse_write(from) || refuse_write(to) ? fail(EROFS) : REAL(rename)(from, to);
}
int renameat(int fd1, const char* from, int fd2, const char* to) noexcept {
  std::string rel;
  return under_mount(fd1, from, rel) || under_mount(fd2, to, rel) ? fail(EROFS) : REAL(renameat)(fd1, from, fd2, to);
}
int truncate(const char* path, off_t len) noexcept {
  return refuse_write(path) ? fail(EROFS) : REAL(truncate)(path, len);
}
int truncate64(const char* path, off64_t len) noexcept {
  return refuse_write(path) ? fail(EROFS) : REAL(truncate64)(path, len);
}

// ---- extended attributes (ls -l asks for ACLs): the store has none ----
ssize_t getxattr(const char* path, const char* name, void* value, size_t size) noexcept {
  std::string rel;
  if (under_mount(AT_FDCWD, path, rel)) return fail(ENODATA);
  const ssize_t rc = REAL(getxattr)(path, name, value, size);
  if (rc >= 0 || errno != ENOENT) return rc;
  if (mount_ancestor(path)) return fail(ENODATA);
  const std::string abs = beside_mount(path);
  return abs.empty() ? fail(ENOENT) : REAL(getxattr)(abs.c_str(), name, value, size);
}
ssize_t lgetxattr(const char* path, const char* name, void* value, size_t size) noexcept {
  std::string rel;
  if (under_mount(AT_FDCWD, path, rel)) return fail(ENODATA);
  const ssize_t rc = REAL(lgetxattr)(path, name, value, size);
  if (rc >= 0 || errno != ENOENT) return rc;
  if (mount_ancestor(path)) return fail(ENODATA);
  const std::string abs = beside_mount(path);
  return abs.empty() ? fail(ENOENT) : REAL(lgetxattr)(abs.c_str(), name, value, size);
}
ssize_t fgetxattr(int fd, const char* name, void* value, size_t size) noexcept {
  return fake(fd) ? fail(ENODATA) : REAL(fgetxattr)(fd, name, value, size);
}
ssize_t listxattr(const char* path, char* list, size_t size) noexcept {
  std::string rel;
  if (under_mount(AT_FDCWD, path, rel)) return 0;
  const ssize_t rc = REAL(listxattr)(path, list, size);
  if (rc >= 0 || errno != ENOENT) return rc;
  if (mount_ancestor(path)) return 0;
  const std::string abs = beside_mount(path);
  return abs.empty() ? fail(ENOENT) : REAL(listxattr)(abs.c_str(), list, size);
}
ssize_t llistxattr(const char* path, char* list, size_t size) noexcept {
  std::string rel;
  if (under_mount(AT_FDCWD, path, rel)) return 0;
  const ssize_t rc = REAL(llistxattr)(path, list, size);
  if (rc >= 0 || errno != ENOENT) return rc;
  if (mount_ancestor(path)) return 0;
  const std::string abs = beside_mount(path);
  return abs.empty() ? fail(ENOENT) : REAL(llistxattr)(abs.c_str(), list, size);
}
ssize_t flistxattr(int fd, char* list, size_t size) noexcept {
  return fake(fd) ? 0 : REAL(flistxattr)(fd, list, size);
}

}  // extern "C"
