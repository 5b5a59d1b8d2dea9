/* Build metadata and the library's allocator boundary. */
#include <stdlib.h>

#include "build_info.h"
#include "trellis/trellis.h"

const char *tl_version(void) { return TL__VERSION; }
const char *tl_build_commit(void) { return TL__COMMIT; }
void tl_free(void *p) { free(p); }
