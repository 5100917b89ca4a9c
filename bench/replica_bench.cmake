# replica_bench.cmake: engine replicas through the whole pipeline (`omnipipe up --engines N`): aggregate
# tok/s, TTFT and routing balance for N = 1 against 2, and the kill-one-engine fault drill (--fault).
# Run through bench/multi-gpu-run and bench/replica-fault on GPUs; tests/CMakeLists.txt runs the fault
# drill on CPU engines (replica_fault). Included by bench/CMakeLists.txt's *.cmake glob.
if(TARGET om_common AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/replica_bench.c)
  find_package(Threads REQUIRED)
  add_executable(replica_bench ${CMAKE_CURRENT_LIST_DIR}/replica_bench.c ${CMAKE_CURRENT_LIST_DIR}/bench_util.c)
  om_warnings(replica_bench)
  target_link_libraries(replica_bench PRIVATE om_common PkgConfig::JANSSON Threads::Threads)
  # it starts `omnipipe up`, which runs the four daemons next to it
  foreach(dep omnipipe tokenizer_svc mm_prep_svc engine_svc decoder_svc)
    if(TARGET ${dep})
      add_dependencies(replica_bench ${dep})
    endif()
  endforeach()
endif()
