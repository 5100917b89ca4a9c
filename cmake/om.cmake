# om.cmake: project-wide warning flags and the test helpers.
#   om_warnings(target)                       -Wall -Wextra -Werror and friends, _GNU_SOURCE
#   om_add_test(NAME name SOURCES ... LIBS ... LABELS ... [ARGS ...] [TIMEOUT s])
#       builds test_<name>, registers it with ctest; OM_SHARED_DIR and OM_SOURCE_DIR are exported
#       to the test's environment and compile definitions so fixtures are found from any build dir.

function(om_warnings tgt)
  target_compile_options(${tgt} PRIVATE
    $<$<COMPILE_LANGUAGE:C>:-Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter>)
  target_compile_definitions(${tgt} PRIVATE _GNU_SOURCE)
  if(OM_SANITIZE)
    target_compile_options(${tgt} PRIVATE $<$<COMPILE_LANGUAGE:C>:-fsanitize=${OM_SANITIZE} -fno-omit-frame-pointer>)
    target_link_options(${tgt} PRIVATE -fsanitize=${OM_SANITIZE})
  endif()
endfunction()

function(om_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT;WORKING_DIRECTORY" "SOURCES;LIBS;LABELS;ARGS;COMMAND" ${ARGN})
  if(T_SOURCES)
    add_executable(test_${T_NAME} ${T_SOURCES})
    om_warnings(test_${T_NAME})
    target_compile_options(test_${T_NAME} PRIVATE -UNDEBUG)
    target_compile_definitions(test_${T_NAME} PRIVATE
      OM_SHARED_DIR="${OM_SHARED_DIR}" OM_SOURCE_DIR="${CMAKE_SOURCE_DIR}" OM_BINARY_DIR="${CMAKE_BINARY_DIR}")
    target_link_libraries(test_${T_NAME} PRIVATE ${T_LIBS} PkgConfig::CMOCKA)
    set_target_properties(test_${T_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
    set(cmd $<TARGET_FILE:test_${T_NAME}> ${T_ARGS})
  else()
    set(cmd ${T_COMMAND})
  endif()
  if(NOT T_WORKING_DIRECTORY)
    set(T_WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  endif()
  add_test(NAME ${T_NAME} COMMAND ${cmd} WORKING_DIRECTORY ${T_WORKING_DIRECTORY})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    ENVIRONMENT "OM_SHARED_DIR=${OM_SHARED_DIR};OM_SOURCE_DIR=${CMAKE_SOURCE_DIR};OM_BIN_DIR=${CMAKE_BINARY_DIR}/bin")
endfunction()
