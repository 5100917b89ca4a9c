# cuda.cmake: the CUDA backend (included by engine_svc/CMakeLists.txt when present).
# Builds eng_cuda (kernels, the vtable backend, the fast model runner) and links it into eng_core
# with OM_HAVE_CUDA defined; registers the gpu-labelled tests and the engine benchmark.
if(OM_CUDA)
  add_library(eng_cuda ${OM_LIB_KIND}
    ${CMAKE_CURRENT_LIST_DIR}/eng_cuda_kern.cu
    ${CMAKE_CURRENT_LIST_DIR}/eng_cuda_attn.cu
    ${CMAKE_CURRENT_LIST_DIR}/eng_cuda_attn_tc.cu
    ${CMAKE_CURRENT_LIST_DIR}/eng_cuda_moe.cu
    ${CMAKE_CURRENT_LIST_DIR}/eng_cuda_backend.cu
    ${CMAKE_CURRENT_LIST_DIR}/eng_cuda_model.cu
    ${CMAKE_CURRENT_LIST_DIR}/eng_cuda_sample.cu
    ${CMAKE_CURRENT_LIST_DIR}/eng_cuda_tp.cu
    ${CMAKE_CURRENT_LIST_DIR}/eng_cuda_ar.cu
    ${CMAKE_CURRENT_LIST_DIR}/eng_cuda_testhook.cu
    ${CMAKE_CURRENT_LIST_DIR}/eng_nccl.c
    ${CMAKE_CURRENT_LIST_DIR}/eng_tp_watch.c)
  target_include_directories(eng_cuda PUBLIC ${CMAKE_CURRENT_LIST_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
  target_compile_options(eng_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 --expt-relaxed-constexpr -Xcompiler=-Wall>)
  set_target_properties(eng_cuda PROPERTIES CUDA_SEPARABLE_COMPILATION OFF POSITION_INDEPENDENT_CODE ON)
  target_link_libraries(eng_cuda PUBLIC CUDA::cudart CUDA::cublas CUDA::cublasLt PkgConfig::JANSSON
                        ${CMAKE_DL_LIBS} Threads::Threads)
  target_link_libraries(eng_core PUBLIC eng_cuda)
  target_compile_definitions(eng_core PUBLIC OM_HAVE_CUDA)
  target_compile_definitions(eng_cuda PUBLIC OM_HAVE_CUDA)

  if(BUILD_TESTING)
    om_add_test(NAME cuda_ops SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_cuda_ops.c
                LIBS eng_core LABELS gpu TIMEOUT 300)
    om_add_test(NAME cuda_model SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_cuda_model.c
                LIBS eng_core LABELS gpu TIMEOUT 300)
    om_add_test(NAME cuda_sample SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_cuda_sample.c
                LIBS eng_core LABELS gpu TIMEOUT 600)
    # tensor parallelism: 2 GPUs vs 1 and the fixtures (skips with fewer than 2 GPUs)
    om_add_test(NAME cuda_tp SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_cuda_tp.c
                LIBS eng_core LABELS gpu TIMEOUT 600)
    # a failing or hanging rank of a TP group: abort, no hang (2 GPUs; skips otherwise)
    om_add_test(NAME cuda_tp_fault SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_cuda_tp_fault.c
                LIBS eng_core LABELS gpu TIMEOUT 900)
    # the NVLink-multicast guard of the NCCL loader (no GPU needed)
    om_add_test(NAME eng_nccl SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_eng_nccl.c
                LIBS eng_core LABELS unit TIMEOUT 60)
    # the GPU sampler's algorithm on the host (no GPU needed)
    om_add_test(NAME cuda_sample_host SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_cuda_sample_host.c
                LIBS eng_core LABELS unit TIMEOUT 120)
  endif()
  add_executable(eng_bench_cuda ${CMAKE_SOURCE_DIR}/bench/eng_bench_cuda.c)
  om_warnings(eng_bench_cuda)
  target_link_libraries(eng_bench_cuda PRIVATE eng_core m)
endif()
if(OM_CUDA AND BUILD_TESTING)
  set_tests_properties(cuda_ops cuda_model cuda_sample cuda_tp cuda_tp_fault PROPERTIES SKIP_RETURN_CODE 77)
endif()
# The tensor-parallel watchdog / abort state machine is plain C: its unit test runs in every build.
if(BUILD_TESTING)
  om_add_test(NAME eng_tp_watch SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_eng_tp_watch.c
              ${CMAKE_CURRENT_LIST_DIR}/eng_tp_watch.c LIBS Threads::Threads LABELS unit TIMEOUT 60)
  target_include_directories(test_eng_tp_watch PRIVATE ${CMAKE_CURRENT_LIST_DIR})
endif()
