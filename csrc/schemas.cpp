// The hdkd:: operator library; the schemas are in schemas.h.
#include "schemas.h"

TORCH_LIBRARY(hdkd, m) { hdkd::define_schemas(m); }
