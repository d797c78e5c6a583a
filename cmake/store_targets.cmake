# Targets of the packed data store (issue 5), included from the top-level CMakeLists.txt
# after the packages are found: include(cmake/store_targets.cmake).
# The store sources are also globbed into libhpdl; these targets build them on their
# own so that the LD_PRELOAD shim stays light (no libhpdl, no MPI) and the store's
# tests do not wait on the rest of the library.
set(HPDL_STORE_ROOT ${CMAKE_CURRENT_LIST_DIR}/..)
option(HPDL_STORE_FUZZ "Build the store's libFuzzer target (needs clang)" OFF)
find_package(ZLIB REQUIRED)
find_package(GTest QUIET)
include(GoogleTest)

# The reader/writer core without MPI: format, reader, writer (and hpdl::Error).
add_library(hpdl_store_lite STATIC
  ${HPDL_STORE_ROOT}/hpdl/store/format.cpp
  ${HPDL_STORE_ROOT}/hpdl/store/reader.cpp
  ${HPDL_STORE_ROOT}/hpdl/store/writer.cpp
  ${HPDL_STORE_ROOT}/hpdl/io/file.cpp
  ${HPDL_STORE_ROOT}/hpdl/core/error.cpp)
set_target_properties(hpdl_store_lite PROPERTIES POSITION_INDEPENDENT_CODE ON)
# HPDL_STORE_LITE: no HDF5 packing (it needs libhpdl's dataset readers; `hpdl pack` has it).
target_compile_definitions(hpdl_store_lite PRIVATE HPDL_STORE_LITE=1)
target_include_directories(hpdl_store_lite PUBLIC ${HPDL_STORE_ROOT})
target_compile_options(hpdl_store_lite PRIVATE ${HPDL_WARNINGS})
target_link_libraries(hpdl_store_lite PUBLIC fmt::fmt
  PRIVATE PkgConfig::LZ4 PkgConfig::ZSTD PkgConfig::XXHASH ZLIB::ZLIB)

# Staging adds MPI (its MPI calls live in hpdl/store/stage_mpi.cpp only).
add_library(hpdl_store_stage STATIC
  ${HPDL_STORE_ROOT}/hpdl/store/stage.cpp
  ${HPDL_STORE_ROOT}/hpdl/store/stage_mpi.cpp
  ${HPDL_STORE_ROOT}/hpdl/core/env.cpp)
target_compile_options(hpdl_store_stage PRIVATE ${HPDL_WARNINGS})
target_compile_definitions(hpdl_store_stage PRIVATE OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
target_link_libraries(hpdl_store_stage PUBLIC hpdl_store_lite MPI::MPI_C PRIVATE PkgConfig::XXHASH)

# libhpdl_intercept.so: LD_PRELOAD shim. Only the interposed libc names are exported
# (version script), so it never clashes with a libhpdl loaded by the same program.
add_library(hpdl_intercept SHARED ${HPDL_STORE_ROOT}/hpdl/store/intercept/intercept.cpp)
target_compile_options(hpdl_intercept PRIVATE ${HPDL_WARNINGS})
target_link_libraries(hpdl_intercept PRIVATE hpdl_store_lite ${CMAKE_DL_LIBS})
target_link_options(hpdl_intercept PRIVATE
  -Wl,--version-script=${HPDL_STORE_ROOT}/hpdl/store/intercept/exports.map -Wl,--exclude-libs,ALL)
set_target_properties(hpdl_intercept PROPERTIES OUTPUT_NAME hpdl_intercept
  LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib)

# A tiny driver with only `pack` and `stage`, for the store's integration tests
# (the full `hpdl` binary registers the same commands).
add_executable(hpdl_store_cli
  ${HPDL_STORE_ROOT}/apps/hpdl/cmd_pack.cpp
  ${HPDL_STORE_ROOT}/apps/hpdl/cmd_stage.cpp
  ${HPDL_STORE_ROOT}/tests/integration/store/store_cli_main.cpp)
target_compile_options(hpdl_store_cli PRIVATE ${HPDL_WARNINGS})
target_compile_definitions(hpdl_store_cli PRIVATE OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
target_link_libraries(hpdl_store_cli PRIVATE hpdl_store_stage CLI11::CLI11)
set_target_properties(hpdl_store_cli PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)

# Benchmark: plain files vs store reader vs LD_PRELOAD (run bench/store/run.sh).
add_executable(hpdl_store_bench ${HPDL_STORE_ROOT}/bench/store/bench_store.cpp)
target_compile_options(hpdl_store_bench PRIVATE ${HPDL_WARNINGS})
target_link_libraries(hpdl_store_bench PRIVATE hpdl_store_lite)
add_executable(hpdl_store_bench_posix ${HPDL_STORE_ROOT}/bench/store/posix_reader.c)
set_target_properties(hpdl_store_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
set_target_properties(hpdl_store_bench_posix PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)

if(GTest_FOUND)
  # Unit tests of format/writer/reader (tests/unit/store/, which the main unit-test glob
  # also picks up) against the light library, and the shim's tests with real programs.
  file(GLOB _store_unit CONFIGURE_DEPENDS ${HPDL_STORE_ROOT}/tests/unit/store/*.cpp)
  # HDF5 packing needs libhpdl: that test runs in hpdl_unit_tests only.
  list(FILTER _store_unit EXCLUDE REGEX "test_store_hdf5\\.cpp$")
  add_executable(hpdl_store_tests ${_store_unit})
  target_compile_options(hpdl_store_tests PRIVATE ${HPDL_WARNINGS})
  target_link_libraries(hpdl_store_tests PRIVATE hpdl_store_lite GTest::gtest_main)
  gtest_discover_tests(hpdl_store_tests TEST_PREFIX "store." DISCOVERY_TIMEOUT 60)

  # A plain program (no hpdl code) that maps, duplicates and canonicalizes store files under the shim.
  add_executable(hpdl_store_posix_probe ${HPDL_STORE_ROOT}/tests/integration/store/posix_probe.cpp)
  target_compile_options(hpdl_store_posix_probe PRIVATE ${HPDL_WARNINGS})
  add_executable(hpdl_store_intercept_tests ${HPDL_STORE_ROOT}/tests/integration/store/test_intercept.cpp)
  target_compile_options(hpdl_store_intercept_tests PRIVATE ${HPDL_WARNINGS})
  target_link_libraries(hpdl_store_intercept_tests PRIVATE hpdl_store_lite GTest::gtest_main)
  target_compile_definitions(hpdl_store_intercept_tests PRIVATE
    HPDL_INTERCEPT_LIB="$<TARGET_FILE:hpdl_intercept>"
    HPDL_POSIX_PROBE="$<TARGET_FILE:hpdl_store_posix_probe>"
    HPDL_STORE_TEST_DIR="${HPDL_STORE_ROOT}/tests/integration/store")
  add_dependencies(hpdl_store_intercept_tests hpdl_intercept hpdl_store_posix_probe)
  gtest_discover_tests(hpdl_store_intercept_tests TEST_PREFIX "store." DISCOVERY_TIMEOUT 60)
endif()

# Staging across two "nodes" (HPDL_NODE_ID per rank) under mpirun -np 2.
add_test(NAME store.stage_mpirun_np2
  COMMAND ${HPDL_STORE_ROOT}/tests/integration/store/stage_mpi.sh
          $<TARGET_FILE:hpdl_store_cli> ${MPIEXEC_EXECUTABLE})
set_tests_properties(store.stage_mpirun_np2 PROPERTIES TIMEOUT 180)
add_test(NAME store.cli_pack_stage_local
  COMMAND ${HPDL_STORE_ROOT}/tests/integration/store/cli_local.sh $<TARGET_FILE:hpdl_store_cli>)

if(HPDL_STORE_FUZZ)
  # Built by bench/store/fuzz.sh with clang; not part of CI.
  add_executable(hpdl_store_fuzz ${HPDL_STORE_ROOT}/bench/store/fuzz_store.cpp)
  target_compile_options(hpdl_store_fuzz PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(hpdl_store_fuzz PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(hpdl_store_fuzz PRIVATE hpdl_store_lite)
endif()
