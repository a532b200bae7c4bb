/*
 * anomaly - a stateful `handler` task: rolling z-score over the last 32
 * readings.
 *
 * Input:  a JSON object with a number in "value" (or, failing that,
 *         "celsius"); other members are ignored.
 * Output: {"value":v,"mean":m,"stddev":s,"z":z,"anomaly":b,"count":n}
 *         where m and s are the mean and sample standard deviation of the
 *         n readings before this one (n <= 32), z = (v - m) / s, and
 *         anomaly = n >= 8 && |z| > 3.  When s is 0, z is 0 if v == m and
 *         null otherwise (then anomaly = n >= 8).  Numbers are rounded to
 *         6 decimal places.  Every reading, anomalous or not, then joins
 *         the window.
 *
 * The window lives in static memory, so it persists for as long as the
 * pooled instance does; run the task with max_concurrency = 1 to keep one
 * window.  An anomaly is also logged at level warn.
 */
#define WASMYARD_IMPLEMENTATION
#include "wasmyard.h"

#define WINDOW 32
#define MIN_COUNT 8
#define Z_LIMIT 3.0
#define MAX_DEPTH 64

static double window[WINDOW];
static uint32_t count; /* readings in the window, <= WINDOW */
static uint32_t next;  /* ring index of the next slot to write */

/* ---- a small JSON reader: validates the whole document and picks out the
 *      top-level members "value" and "celsius" ---- */

typedef struct {
    const uint8_t *s, *p, *end;
    int depth;
} reader;

enum { MISSING = 0, NUMBER, NOT_NUMBER };

typedef struct {
    int state;
    double v;
} member;

static void ws(reader *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++;
}

static int lit(reader *r, const char *word) {
    for (; *word; word++, r->p++)
        if (r->p >= r->end || *r->p != (uint8_t)*word) return 0;
    return 1;
}

static int hex4(reader *r, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++, r->p++) {
        if (r->p >= r->end) return 0;
        uint8_t c = *r->p;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return 0;
    }
    *out = v;
    return 1;
}

/* A string at r->p (on the opening quote).  Its decoded bytes go to key[],
 * up to cap bytes; *klen gets the decoded length, or cap + 1 if longer. */
static int string(reader *r, char *key, uint32_t cap, uint32_t *klen) {
    uint32_t n = 0;
    r->p++;
    for (;;) {
        if (r->p >= r->end) return 0;
        uint8_t c = *r->p++;
        uint32_t u = c;
        if (c == '"') break;
        if (c < 0x20) return 0;
        if (c == '\\') {
            if (r->p >= r->end) return 0;
            switch (*r->p++) {
            case '"': u = '"'; break;
            case '\\': u = '\\'; break;
            case '/': u = '/'; break;
            case 'b': u = '\b'; break;
            case 'f': u = '\f'; break;
            case 'n': u = '\n'; break;
            case 'r': u = '\r'; break;
            case 't': u = '\t'; break;
            case 'u':
                if (!hex4(r, &u)) return 0;
                if (u > 0x7f) u = 0xff; /* not ASCII: cannot match a key we look for */
                break;
            default: return 0;
            }
        }
        if (n < cap) key[n] = (char)u;
        if (n <= cap) n++;
    }
    *klen = n;
    return 1;
}

static int number(reader *r, double *out) {
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    int neg = 0, digits = 0;
    uint64_t m = 0;
    int32_t exp10 = 0;
    if (r->p < r->end && *r->p == '-') neg = 1, r->p++;
    if (r->p >= r->end || *r->p < '0' || *r->p > '9') return 0;
    if (*r->p == '0') {
        r->p++;
    } else {
        for (; r->p < r->end && *r->p >= '0' && *r->p <= '9'; r->p++) {
            if (digits < 19) m = m * 10 + (*r->p - '0'), digits++;
            else exp10++;
        }
    }
    if (r->p < r->end && *r->p == '.') {
        r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9') return 0;
        for (; r->p < r->end && *r->p >= '0' && *r->p <= '9'; r->p++) {
            if (digits < 19 && (m || *r->p != '0')) m = m * 10 + (*r->p - '0'), digits++, exp10--;
            else if (!m) exp10--;
        }
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        int eneg = 0;
        int32_t e = 0;
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-')) eneg = *r->p++ == '-';
        if (r->p >= r->end || *r->p < '0' || *r->p > '9') return 0;
        for (; r->p < r->end && *r->p >= '0' && *r->p <= '9'; r->p++)
            if (e < 100000) e = e * 10 + (*r->p - '0');
        exp10 += eneg ? -e : e;
    }
    double v = (double)m;
    if (m == 0) {
        v = 0.0;
    } else if (m < (1ull << 53) && exp10 >= -22 && exp10 <= 22) {
        v = exp10 < 0 ? v / pow10[-exp10] : v * pow10[exp10]; /* exact inputs: correctly rounded */
    } else {
        for (; exp10 > 22 && v < 1e308; exp10 -= 22) v *= 1e22;
        for (; exp10 < -22 && v > 0; exp10 += 22) v /= 1e22;
        if (exp10 > 22) v = __builtin_inf();
        else if (exp10 < -22) v = 0.0;
        else v = exp10 < 0 ? v / pow10[-exp10] : v * pow10[exp10];
    }
    *out = neg ? -v : v;
    return 1;
}

static int value(reader *r, member *into);

static int object(reader *r, member *val, member *cel) {
    if (++r->depth > MAX_DEPTH) return 0;
    r->p++;
    ws(r);
    if (r->p < r->end && *r->p == '}') return r->p++, r->depth--, 1;
    for (;;) {
        char key[8];
        uint32_t klen;
        member *into = NULL;
        if (r->p >= r->end || *r->p != '"' || !string(r, key, sizeof key, &klen)) return 0;
        if (r->depth == 1 && klen == 5 && __builtin_memcmp(key, "value", 5) == 0) into = val;
        if (r->depth == 1 && klen == 7 && __builtin_memcmp(key, "celsius", 7) == 0) into = cel;
        ws(r);
        if (r->p >= r->end || *r->p != ':') return 0;
        r->p++;
        ws(r);
        if (!value(r, into)) return 0;
        ws(r);
        if (r->p >= r->end) return 0;
        if (*r->p == '}') return r->p++, r->depth--, 1;
        if (*r->p != ',') return 0;
        r->p++;
        ws(r);
    }
}

static int array(reader *r) {
    if (++r->depth > MAX_DEPTH) return 0;
    r->p++;
    ws(r);
    if (r->p < r->end && *r->p == ']') return r->p++, r->depth--, 1;
    for (;;) {
        if (!value(r, NULL)) return 0;
        ws(r);
        if (r->p >= r->end) return 0;
        if (*r->p == ']') return r->p++, r->depth--, 1;
        if (*r->p != ',') return 0;
        r->p++;
        ws(r);
    }
}

/* Any JSON value; if `into` is set, records whether it was a number. */
static int value(reader *r, member *into) {
    uint32_t klen;
    double d;
    if (r->p >= r->end) return 0;
    if (into) into->state = NOT_NUMBER; /* duplicate members: the last one counts */
    switch (*r->p) {
    case '{': return object(r, NULL, NULL);
    case '[': return array(r);
    case '"': return string(r, NULL, 0, &klen);
    case 't': return lit(r, "true");
    case 'f': return lit(r, "false");
    case 'n': return lit(r, "null");
    default:
        if (!number(r, &d)) return 0;
        if (into) into->state = NUMBER, into->v = d;
        return 1;
    }
}

/* ---- output ---- */

typedef struct {
    char *p;
} out;

static void put(out *o, const char *s) {
    while (*s) *o->p++ = *s++;
}

static void put_uint(out *o, uint64_t v, int width) {
    char d[20];
    int n = 0;
    do d[n++] = (char)('0' + v % 10), v /= 10;
    while (v);
    while (n < width) d[n++] = '0';
    while (n) *o->p++ = d[--n];
}

/* x rounded to 6 decimals with trailing zeros dropped; exponent notation
 * outside [1e-4, 1e15); null when not finite. */
static void put_num(out *o, double x) {
    if (x != x || x - x != 0.0) {
        put(o, "null");
        return;
    }
    x += 0.0; /* -0 -> 0 */
    if (x < 0) *o->p++ = '-', x = -x;
    int exp10 = 0;
    if (x >= 1e15) {
        while (x >= 10.0) x /= 10.0, exp10++;
    } else if (x != 0.0 && x < 1e-4) {
        while (x < 1.0) x *= 10.0, exp10--;
    }
    uint64_t ip = (uint64_t)x;
    uint64_t frac = (uint64_t)((x - (double)ip) * 1e6 + 0.5);
    if (frac >= 1000000) frac -= 1000000, ip++;
    if (exp10 && ip >= 10) ip /= 10, exp10++; /* 9.9999996e5 -> 1e6 */
    put_uint(o, ip, 1);
    if (frac) {
        int width = 6;
        while (frac % 10 == 0) frac /= 10, width--;
        *o->p++ = '.';
        put_uint(o, frac, width);
    }
    if (exp10) {
        put(o, exp10 < 0 ? "e-" : "e+");
        put_uint(o, (uint64_t)(exp10 < 0 ? -exp10 : exp10), 1);
    }
}

static int64_t fail_at(const char *what, uint32_t offset) {
    char *msg = wy_arena_alloc(96);
    if (!msg) return wy_err("anomaly: out of memory");
    out o = {msg};
    put(&o, what);
    put_uint(&o, offset, 1);
    return wy_errn(msg, (uint32_t)(o.p - msg));
}

WY_HANDLER int64_t wy_handle(const uint8_t *in, uint32_t len) {
    reader r = {in, in, in + len, 0};
    member val = {MISSING, 0}, cel = {MISSING, 0};

    ws(&r);
    if (r.p < r.end && *r.p != '{') return wy_err("anomaly: expected a JSON object such as {\"value\":21.5}");
    if (r.p >= r.end || !object(&r, &val, &cel)) return fail_at("anomaly: input is not valid JSON, at byte ", (uint32_t)(r.p - in));
    ws(&r);
    if (r.p != r.end) return fail_at("anomaly: unexpected data after the JSON object, at byte ", (uint32_t)(r.p - in));

    member *m = val.state != MISSING ? &val : &cel;
    if (m->state == MISSING) return wy_err("anomaly: missing \"value\" (or \"celsius\")");
    if (m->state != NUMBER) return wy_err(m == &val ? "anomaly: \"value\" must be a number" : "anomaly: \"celsius\" must be a number");
    double v = m->v;
    if (v - v != 0.0) return wy_err("anomaly: the reading is out of range");

    /* Baseline: the readings before this one. Shifted by the oldest one so a
     * flat series gives exactly mean == value and stddev == 0. */
    uint32_t n = count;
    double mean = 0.0, sd = 0.0, z = 0.0;
    int z_null = 0, anomaly = 0;
    if (n) {
        uint32_t first = (next + WINDOW - n) % WINDOW;
        double k = window[first], sum = 0.0, sq = 0.0;
        for (uint32_t i = 0; i < n; i++) sum += window[(first + i) % WINDOW] - k;
        mean = k + sum / n;
        for (uint32_t i = 0; i < n; i++) {
            double d = window[(first + i) % WINDOW] - mean;
            sq += d * d;
        }
        sd = n > 1 ? __builtin_sqrt(sq / (n - 1)) : 0.0;
        if (sd > 0.0) {
            z = (v - mean) / sd;
            anomaly = n >= MIN_COUNT && (z > Z_LIMIT || z < -Z_LIMIT);
        } else if (v != mean) {
            z_null = 1;
            anomaly = n >= MIN_COUNT;
        }
    }

    window[next] = v;
    next = (next + 1) % WINDOW;
    if (count < WINDOW) count++;

    char *buf = wy_arena_alloc(256);
    if (!buf) return wy_err("anomaly: out of memory");
    out o = {buf};
    put(&o, "{\"value\":");
    put_num(&o, v);
    put(&o, ",\"mean\":");
    put_num(&o, mean);
    put(&o, ",\"stddev\":");
    put_num(&o, sd);
    put(&o, ",\"z\":");
    if (z_null) put(&o, "null");
    else put_num(&o, z);
    put(&o, anomaly ? ",\"anomaly\":true,\"count\":" : ",\"anomaly\":false,\"count\":");
    put_uint(&o, n, 1);
    put(&o, "}");
    uint32_t olen = (uint32_t)(o.p - buf);

    if (anomaly) {
        char line[128];
        out l = {line};
        put(&l, "anomaly: value ");
        put_num(&l, v);
        put(&l, " against mean ");
        put_num(&l, mean);
        put(&l, ", z ");
        if (z_null) put(&l, "unbounded (flat window)");
        else put_num(&l, z);
        wy_log(WY_LOG_WARN, line, (uint32_t)(l.p - line));
    }
    return wy_ok(buf, olen);
}
