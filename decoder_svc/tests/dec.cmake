# decoder_svc unit tests (label unit): dec_stream (fixture parity, UTF-8, stop strings, reasoning
# split) and dec_service (the TokenBatch handler). Both read the tiny-omni tokenizer and
# text_golden.json from OM_SHARED_DIR.
om_add_test(NAME dec_stream SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_dec_stream.c
  LIBS dec_core PkgConfig::JANSSON LABELS unit TIMEOUT 300)
if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/test_dec_service.c)
  om_add_test(NAME dec_service SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_dec_service.c
    LIBS dec_core LABELS unit TIMEOUT 300)
endif()
# allocation counting: dec_core's malloc/calloc/realloc calls are wrapped at link time
om_add_test(NAME dec_alloc SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_dec_alloc.c
  LIBS dec_core "-Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc" LABELS unit TIMEOUT 300)
