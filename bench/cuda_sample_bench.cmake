# cuda_sample_bench.cmake: the GPU sampler alone (the cuda backend's SAMPLE hook), per call.
if(OM_CUDA AND TARGET eng_core AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/cuda_sample_bench.c)
  add_executable(cuda_sample_bench ${CMAKE_CURRENT_LIST_DIR}/cuda_sample_bench.c)
  om_warnings(cuda_sample_bench)
  target_link_libraries(cuda_sample_bench PRIVATE eng_core m)
endif()
