# jinja.cmake: tests of the chat-template interpreter (tok_jinja.c) and conversation rendering
# (tok_chat.c). Included from tokenizer_svc/CMakeLists.txt after tok_core is defined.
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/tok_jinja.c)
  om_add_test(NAME jinja SOURCES tests/test_jinja.c LIBS tok_core LABELS unit TIMEOUT 60)

  # C side of the jinja2 oracle: JSON lines in, renderings out.
  add_executable(jinja_render_tool tests/test_jinja_render_tool.c)
  om_warnings(jinja_render_tool)
  target_link_libraries(jinja_render_tool PRIVATE tok_core)
  set_target_properties(jinja_render_tool PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  # The oracle is Debian's python3-jinja2, so prefer the system interpreter.
  find_program(OM_JINJA_PYTHON python3 PATHS /usr/bin NO_DEFAULT_PATH)
  if(NOT OM_JINJA_PYTHON)
    find_program(OM_JINJA_PYTHON python3)
  endif()
  om_add_test(NAME jinja_oracle
    COMMAND ${OM_JINJA_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/tests/jinja_oracle.py
            $<TARGET_FILE:jinja_render_tool> ${OM_SHARED_DIR}
    LABELS unit TIMEOUT 300)
  # End to end: `omnipipe render --jsonl` on both fixture checkpoints vs jinja2 and the transformers goldens.
  if(EXISTS ${CMAKE_SOURCE_DIR}/cli/cmd_render.c AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/tok_chat.c)
    om_add_test(NAME jinja_render_cli
      COMMAND ${OM_JINJA_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/tests/jinja_oracle.py --cli
              $<TARGET_FILE:omnipipe> ${OM_SHARED_DIR}
      LABELS unit TIMEOUT 300)
  endif()
endif()
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/tok_chat.c AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_jinja_chat.c)
  om_add_test(NAME jinja_chat SOURCES tests/test_jinja_chat.c LIBS tok_core LABELS unit TIMEOUT 120)
endif()
