# model.cmake: engine-cpu's tests (model parity against the transformers fixtures, loader errors,
# dummy load). Included from engine_svc/CMakeLists.txt when BUILD_TESTING.
foreach(t eng_loader eng_model eng_model_mm eng_devices)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_${t}.c)
    om_add_test(NAME ${t} SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_${t}.c
                LIBS eng_core LABELS unit TIMEOUT 600)
  endif()
endforeach()
# `omnipipe make-model` (cli/cmd_make_model.c) is tested here against the engine that loads it.
if(EXISTS ${CMAKE_SOURCE_DIR}/cli/cmd_make_model.c AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_make_model.c)
  om_add_test(NAME make_model SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_make_model.c
              ${CMAKE_SOURCE_DIR}/cli/cmd_make_model.c LIBS eng_core LABELS unit TIMEOUT 300)
endif()
