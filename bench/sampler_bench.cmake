# sampler_bench.cmake: the CPU sampler's cost per token at a Qwen-size vocabulary (sampler-cpu).
if(TARGET eng_core AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/sampler_bench.c)
  add_executable(sampler_bench ${CMAKE_CURRENT_LIST_DIR}/sampler_bench.c)
  om_warnings(sampler_bench)
  target_link_libraries(sampler_bench PRIVATE eng_core)
endif()
