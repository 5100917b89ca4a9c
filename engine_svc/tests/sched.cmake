# engine_svc/tests/sched.cmake: unit tests of the scheduler side of the engine (KV blocks and prefix
# cache, sampler, scheduler, service). Included by engine_svc/CMakeLists.txt. The KV and sampler
# tests build their module's source directly, so they do not depend on the model code.
set(_sched_dir ${CMAKE_CURRENT_SOURCE_DIR})
foreach(_m eng_kv eng_sampler)
  if(EXISTS ${_sched_dir}/tests/test_${_m}.c AND EXISTS ${_sched_dir}/${_m}.c)
    om_add_test(NAME ${_m} SOURCES ${_sched_dir}/tests/test_${_m}.c ${_sched_dir}/${_m}.c
      LIBS om_common m LABELS unit TIMEOUT 60)
    target_include_directories(test_${_m} PRIVATE ${_sched_dir})
  endif()
endforeach()
if(EXISTS ${_sched_dir}/tests/test_eng_sched.c)
  om_add_test(NAME eng_sched SOURCES ${_sched_dir}/tests/test_eng_sched.c ${_sched_dir}/eng_sched.c
    ${_sched_dir}/eng_kv.c LIBS om_common LABELS unit TIMEOUT 60)
  target_include_directories(test_eng_sched PRIVATE ${_sched_dir})
endif()
if(EXISTS ${_sched_dir}/tests/test_eng_service.c AND EXISTS ${_sched_dir}/eng_service.c
   AND EXISTS ${_sched_dir}/eng_model.c)
  om_add_test(NAME eng_service SOURCES ${_sched_dir}/tests/test_eng_service.c LIBS eng_core
    LABELS unit TIMEOUT 300)
endif()
if(EXISTS ${_sched_dir}/tests/test_eng_service_cli.c AND EXISTS ${CMAKE_SOURCE_DIR}/cli/cmd_generate.c
   AND EXISTS ${_sched_dir}/eng_model.c)
  om_add_test(NAME eng_service_cli SOURCES ${_sched_dir}/tests/test_eng_service_cli.c
    ${CMAKE_SOURCE_DIR}/cli/cmd_generate.c LIBS eng_core LABELS unit TIMEOUT 300)
endif()
if(OM_CUDA AND EXISTS ${_sched_dir}/tests/test_eng_service_gpu.c AND EXISTS ${_sched_dir}/eng_model.c)
  om_add_test(NAME eng_service_gpu SOURCES ${_sched_dir}/tests/test_eng_service_gpu.c LIBS eng_core
    LABELS gpu TIMEOUT 300)
  set_tests_properties(eng_service_gpu PROPERTIES SKIP_RETURN_CODE 77)
endif()
