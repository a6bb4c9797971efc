#include <stddef.h>
#define BUF_SIZE 16
int check_length(size_t len);
