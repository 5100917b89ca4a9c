# pipeline_bench.cmake: the pipeline overhead benchmark (tokens/s and TTFT through the four daemons
# against eng_service alone in process). Run through bench/pipeline-overhead MODEL [BACKEND] [flags].
# Included by bench/CMakeLists.txt's *.cmake glob.
if(TARGET eng_core AND TARGET om_common AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/pipeline_bench.c)
  find_package(Threads REQUIRED)
  add_executable(pipeline_bench ${CMAKE_CURRENT_LIST_DIR}/pipeline_bench.c ${CMAKE_CURRENT_LIST_DIR}/bench_util.c)
  om_warnings(pipeline_bench)
  target_link_libraries(pipeline_bench PRIVATE eng_core om_common PkgConfig::JANSSON Threads::Threads)
  # it starts `omnipipe up`, which runs the four daemons next to it
  foreach(dep omnipipe tokenizer_svc mm_prep_svc engine_svc decoder_svc)
    if(TARGET ${dep})
      add_dependencies(pipeline_bench ${dep})
    endif()
  endforeach()
endif()
