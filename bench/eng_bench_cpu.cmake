# eng_bench_cpu.cmake: the CPU reference backend's throughput benchmark (engine-cpu).
if(TARGET eng_core AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/eng_bench_cpu.c)
  add_executable(eng_bench_cpu ${CMAKE_CURRENT_LIST_DIR}/eng_bench_cpu.c)
  om_warnings(eng_bench_cpu)
  target_link_libraries(eng_bench_cpu PRIVATE eng_core)
endif()
