/*
 * echo - a `command` task: copies stdin to stdout byte for byte and reports
 * the count on stderr ("echo: N bytes").  Exit status 0, or 1 if a read or
 * write fails.  Uses no arguments and no environment.
 */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

static unsigned char buf[65536];

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void report(const char *what, uint64_t count) {
    /* "echo: <what>N bytes\n" without pulling printf into the module. */
    char line[64], digits[20];
    size_t n = 0, d = 0;
    for (const char *s = "echo: "; *s; s++) line[n++] = *s;
    for (; *what; what++) line[n++] = *what;
    do {
        digits[d++] = (char)('0' + count % 10);
        count /= 10;
    } while (count);
    while (d) line[n++] = digits[--d];
    for (const char *s = " bytes\n"; *s; s++) line[n++] = *s;
    write_all(2, (const unsigned char *)line, n);
}

int main(void) {
    uint64_t total = 0;
    for (;;) {
        ssize_t r = read(0, buf, sizeof buf);
        if (r == 0) break;
        if (r < 0) {
            if (errno == EINTR) continue;
            report("read failed after ", total);
            return 1;
        }
        if (write_all(1, buf, (size_t)r) != 0) {
            report("write failed after ", total);
            return 1;
        }
        total += (uint64_t)r;
    }
    report("", total);
    return 0;
}
