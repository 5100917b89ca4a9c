# tokenizer_svc/tests/bpe.cmake: the BPE codec tests (owner: bpe), included by tokenizer_svc/CMakeLists.txt.
om_add_test(NAME tok_codec SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_tok_codec.c
  LIBS tok_core PkgConfig::JANSSON PkgConfig::UTF8PROC Threads::Threads LABELS unit TIMEOUT 300)
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_tok_codec_fuzz.c)
  om_add_test(NAME tok_codec_fuzz SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_tok_codec_fuzz.c
    LIBS tok_core PkgConfig::JANSSON PkgConfig::UTF8PROC PkgConfig::PCRE2 LABELS unit TIMEOUT 300)
endif()
# The CLI over the golden cases (needs build/bin/omnipipe; skipped with code 77 until it exists).
find_program(OM_PYTHON3 python3)
if(OM_PYTHON3)
  om_add_test(NAME tok_codec_cli COMMAND ${OM_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_tok_codec_cli.py
    ${CMAKE_BINARY_DIR}/bin/omnipipe ${OM_SHARED_DIR}/fixtures LABELS unit TIMEOUT 300)
  set_tests_properties(tok_codec_cli PROPERTIES SKIP_RETURN_CODE 77)
endif()
