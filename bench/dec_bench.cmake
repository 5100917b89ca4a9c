# dec_bench: decoder_svc benchmarks (detokenize throughput, per-step cost of dec_service for a
# 256-request TokenBatch). Run: OM_SHARED_DIR=../shared build/bin/dec_bench [MODEL_DIR] [--batch B]
# [--steps T]. Included by bench/CMakeLists.txt's *.cmake glob.
if(TARGET dec_core)
  add_executable(dec_bench ${CMAKE_CURRENT_LIST_DIR}/dec_bench.c)
  om_warnings(dec_bench)
  target_link_libraries(dec_bench PRIVATE dec_core)
endif()
