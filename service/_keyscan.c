/* One pass over JSON bytes for the lean decoder (service/lean.py): syntax, unique keys,
   and which Bundle entries to decode.

   proof(buffer) -> bool. True only when the buffer is one JSON document orjson accepts
   (checked here, stricter where unsure: UTF-8 is checked by the caller), every object's
   member names are pairwise different byte strings, no member name holds a backslash (an
   escape could spell another name), no number could overflow a double (an exponent of 3+
   digits, or 200+ digits), nesting stays within 512 levels (orjson allows 1024) and no
   object has more than 64 members (names are compared pairwise: 64 keeps a crafted body as
   cheap to scan as to parse; no FHIR element has that many). Anything else gives False:
   the caller then takes the generic path (service/strict_json.py), which decides. The
   scanner must never read out of bounds and never say True wrongly; a wrong False only
   costs speed.
   entry_spans() and plan() add where the Bundle's entries are, and which to decode.
   entry_count() bounds the work of a request before anything is decoded (issue 19, 6). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAX_DEPTH 512
#define MAX_KEYS 64

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
} key_t_;

/* Where the elements of the top-level object's "entry" array start and end (when asked).
   The scan runs without the GIL, so memory comes from the PyMem_Raw* functions. */
typedef struct {
    Py_ssize_t *at;
    Py_ssize_t n, cap;
    int overflow;
} spans_t;

static void span_add(spans_t *sp, Py_ssize_t pos) {
    if (sp == NULL || sp->overflow) return;
    if (sp->n == sp->cap) {
        Py_ssize_t ncap = sp->cap ? sp->cap * 2 : 1024;
        Py_ssize_t *grown = PyMem_RawRealloc(sp->at, sizeof(Py_ssize_t) * (size_t)ncap);
        if (grown == NULL) {
            sp->overflow = 1;
            return;
        }
        sp->at = grown;
        sp->cap = ncap;
    }
    sp->at[sp->n++] = pos;
}


/* -- plan(): which entries of a Bundle the record builder may read ----------------------

   Roles of the containers on the way to what decides (depth 1 is the Bundle object):
   Bundle -> "entry" array -> entry object -> "resource" object -> "code" concept ->
   "coding" array -> coding object -> "code" string; and resource -> "component" array ->
   component object -> "code" concept -> (as above). Every other container is R_NONE. An entry
   is left out only when its resource is an Observation (resourceType spelled without an
   escape) and nothing on those paths could carry a protocol code: no coding code that is a
   protocol code, none that is not a string or holds an escape, no container of an unexpected
   type on the path, no "contained" element (a panel's contained members are results of their
   own), and a fullUrl that is a short string without escapes. Anything else keeps
   the entry: keeping one is always safe (it is decoded and read as the generic path reads it). */
enum { R_NONE, R_TOP, R_ENTRIES, R_ENTRY, R_RES, R_CONCEPT, R_CODINGS, R_CODING, R_COMPS, R_COMP };
enum {
    K_OTHER, K_ENTRY, K_RTYPE, K_RESOURCE, K_FULLURL, K_CODE, K_CODING, K_COMPONENT, K_CONTAINED,
    K_ELEMENT
};

typedef struct {
    const char *const *code_p; /* the protocol codes (UTF-8) */
    const Py_ssize_t *code_n;
    Py_ssize_t ncodes;
    Py_ssize_t max_full_url;
    spans_t out;         /* position, start, end of each entry to decode */
    int bad;             /* an envelope the generic path must judge (e.g. an entry not an object) */
    int top_bundle;      /* the top object's resourceType is "Bundle" */
    int have_entry;      /* it has an "entry" array */
    Py_ssize_t position; /* index of the current entry in the array */
    Py_ssize_t start;    /* where the current entry starts */
    int is_obs, keep;
    Py_ssize_t max_entries; /* -1: no cap; else more elements in "entry" arrays stop the scan */
    Py_ssize_t entries;     /* elements of every "entry" array so far (nested Bundles too) */
    int too_many;           /* the scan stopped there: no plan, the caller refuses the body */
} plan_t;

static int key_id(const unsigned char *k, Py_ssize_t n) {
    switch (n) {
    case 4: return memcmp(k, "code", 4) == 0 ? K_CODE : K_OTHER;
    case 5: return memcmp(k, "entry", 5) == 0 ? K_ENTRY : K_OTHER;
    case 6: return memcmp(k, "coding", 6) == 0 ? K_CODING : K_OTHER;
    case 7: return memcmp(k, "fullUrl", 7) == 0 ? K_FULLURL : K_OTHER;
    case 8: return memcmp(k, "resource", 8) == 0 ? K_RESOURCE : K_OTHER;
    case 9:
        if (memcmp(k, "component", 9) == 0) return K_COMPONENT;
        return memcmp(k, "contained", 9) == 0 ? K_CONTAINED : K_OTHER;
    case 12: return memcmp(k, "resourceType", 12) == 0 ? K_RTYPE : K_OTHER;
    default: return K_OTHER;
    }
}

static int is_protocol_code(const plan_t *pl, const unsigned char *v, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < pl->ncodes; k++) {
        if (pl->code_n[k] == n && memcmp(pl->code_p[k], v, (size_t)n) == 0) return 1;
    }
    return 0;
}

/* A container opens in context (role, key): its role, or the entry's verdict changes. */
static unsigned char plan_open(plan_t *pl, int role, int key, int is_object, Py_ssize_t at) {
    switch (role) {
    case R_NONE: return R_NONE;
    case R_TOP:
        if (key != K_ENTRY) return R_NONE;
        if (is_object) pl->bad = 1; /* "entry" must be an array */
        pl->have_entry = 1;
        return is_object ? R_NONE : R_ENTRIES;
    case R_ENTRIES:
        if (!is_object) {
            pl->bad = 1;
            return R_NONE;
        }
        pl->start = at;
        pl->is_obs = 0;
        pl->keep = 0;
        return R_ENTRY;
    case R_ENTRY:
        if (key == K_RESOURCE) {
            if (is_object) return R_RES;
            pl->keep = 1;
        } else if (key == K_FULLURL) {
            pl->keep = 1;
        }
        return R_NONE;
    case R_RES:
        if (key == K_CODE) {
            if (is_object) return R_CONCEPT;
            pl->keep = 1;
        } else if (key == K_COMPONENT) {
            if (!is_object) return R_COMPS;
            pl->keep = 1;
        } else if (key == K_RTYPE || key == K_CONTAINED) {
            pl->keep = 1; /* contained: a panel's members may be results (service.contained) */
        }
        return R_NONE;
    case R_CONCEPT:
        if (key != K_CODING) return R_NONE;
        if (!is_object) return R_CODINGS;
        pl->keep = 1;
        return R_NONE;
    case R_CODINGS:
        if (is_object) return R_CODING;
        pl->keep = 1;
        return R_NONE;
    case R_CODING:
        if (key == K_CODE) pl->keep = 1;
        return R_NONE;
    case R_COMPS:
        if (is_object) return R_COMP;
        pl->keep = 1;
        return R_NONE;
    case R_COMP:
        if (key != K_CODE) return R_NONE;
        if (is_object) return R_CONCEPT;
        pl->keep = 1;
        return R_NONE;
    }
    return R_NONE;
}

/* A value other than a container in context (role, key): a string (``v``, ``n`` bytes,
   ``escaped`` when it holds a backslash), or a number, true, false or null (``v`` NULL,
   ``escaped`` 1: read like a string that cannot be trusted as written). */
static void plan_value(plan_t *pl, int role, int key, const unsigned char *v, Py_ssize_t n,
                        int escaped) {
    switch (role) {
    case R_TOP:
        if (key == K_RTYPE) pl->top_bundle = !escaped && n == 6 && memcmp(v, "Bundle", 6) == 0;
        if (key == K_ENTRY) pl->bad = 1;
        return;
    case R_ENTRIES: pl->bad = 1; return;
    case R_ENTRY:
        if (key == K_RESOURCE || (key == K_FULLURL && (escaped || n > pl->max_full_url)))
            pl->keep = 1;
        return;
    case R_RES:
        if (key == K_RTYPE) pl->is_obs = !escaped && n == 11 && memcmp(v, "Observation", 11) == 0;
        else if (key == K_CODE || key == K_COMPONENT || key == K_CONTAINED) pl->keep = 1;
        return;
    case R_CONCEPT:
        if (key == K_CODING) pl->keep = 1;
        return;
    case R_CODINGS: case R_COMPS: pl->keep = 1; return;
    case R_CODING:
        if (key == K_CODE && (escaped || is_protocol_code(pl, v, n))) pl->keep = 1;
        return;
    case R_COMP:
        if (key == K_CODE) pl->keep = 1;
        return;
    }
}

/* An entry object closes (its last byte at ``end``): listed unless proven irrelevant. */
static void plan_entry_done(plan_t *pl, Py_ssize_t end) {
    if (!(pl->is_obs && !pl->keep)) {
        span_add(&pl->out, pl->position);
        span_add(&pl->out, pl->start);
        span_add(&pl->out, end);
    }
    pl->position++;
}

/* What the scanner expects next at one level (depth 0 is the document itself). */
enum { S_VALUE, S_VALUE_OR_END, S_KEY, S_KEY_OR_END, S_COLON, S_AFTER };

static int hex4(const unsigned char *p, unsigned *out) {
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned char h = p[k];
        v <<= 4;
        if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
        else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* The string whose opening quote is at s[i - 1]: the index after its closing quote, or -1
   when it is not a JSON string orjson accepts (a raw control character, a bad escape, an
   unpaired surrogate escape, no closing quote). ``escaped``: whether it holds a backslash. */
static Py_ssize_t string_end(const unsigned char *s, Py_ssize_t len, Py_ssize_t i, int *escaped) {
    *escaped = 0;
    for (;;) {
#ifdef __SSE2__
        const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
        const __m128i control = _mm_set1_epi8(0x1f);
        while (i + 16 <= len) {
            __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
            __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
            hit = _mm_or_si128(hit, _mm_cmpeq_epi8(_mm_max_epu8(v, control), control));
            int mask = _mm_movemask_epi8(hit);
            if (mask) {
                i += __builtin_ctz((unsigned)mask);
                break;
            }
            i += 16;
        }
#endif
        while (i < len && s[i] != '"' && s[i] != '\\' && s[i] >= 0x20) i++;
        if (i >= len || s[i] < 0x20) return -1;
        if (s[i] == '"') return i + 1;
        /* an escape */
        *escaped = 1;
        if (i + 1 >= len) return -1;
        unsigned char e = s[i + 1];
        if (e == 'u') {
            unsigned cp, low;
            if (i + 6 > len || !hex4(s + i + 2, &cp)) return -1;
            i += 6;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return -1; /* a low surrogate alone */
            if (cp >= 0xD800 && cp <= 0xDBFF) {           /* must be followed by a low one */
                if (i + 6 > len || s[i] != '\\' || s[i + 1] != 'u' || !hex4(s + i + 2, &low) ||
                    low < 0xDC00 || low > 0xDFFF)
                    return -1;
                i += 6;
            }
        } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                   e == 'r' || e == 't') {
            i += 2;
        } else {
            return -1;
        }
    }
}

/* The number starting at s[i]: the index after it, or -1 when it is not a JSON number or
   could overflow a double (200+ digits, an exponent of 3+ digits): orjson refuses those. */
static Py_ssize_t number_end(const unsigned char *s, Py_ssize_t len, Py_ssize_t i) {
    Py_ssize_t digits = 0, k;
    if (s[i] == '-') i++;
    if (i >= len || s[i] < '0' || s[i] > '9') return -1;
    if (s[i] == '0') {
        i++;
        digits = 1;
    } else {
        for (k = i; i < len && s[i] >= '0' && s[i] <= '9'; i++) ;
        digits = i - k;
    }
    if (i < len && s[i] == '.') {
        i++;
        for (k = i; i < len && s[i] >= '0' && s[i] <= '9'; i++) ;
        if (i == k) return -1;
        digits += i - k;
    }
    if (digits >= 200) return -1;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) i++;
        for (k = i; i < len && s[i] >= '0' && s[i] <= '9'; i++) ;
        if (i == k || i - k >= 3) return -1;
    }
    return i;
}

/* The whole scan: syntax (as orjson accepts it, or stricter), unique member names, the
   entry spans (``sp``) and the decode plan (``pl``). 1 when everything holds. */
static int scan(const unsigned char *s, Py_ssize_t len, spans_t *sp, plan_t *pl) {
    /* per level: whether it is an object, what comes next, where its keys start in `keys`,
       and (for plan()) its role and the key whose value comes next */
    unsigned char is_obj[MAX_DEPTH + 1];
    unsigned char state[MAX_DEPTH + 1];
    int key_base[MAX_DEPTH + 1];
    unsigned char role[MAX_DEPTH + 1];
    unsigned char key_of[MAX_DEPTH + 1];
    key_t_ *keys = NULL;
    int nkeys = 0, cap = 0, depth = 0, ok = 0;
    int top_key_is_entry = 0, in_entry = 0; /* in_entry: depth 2 is the entry array */
    /* for the entry cap: the member being read is named "entry"; a level is such an array */
    int key_is_entry = 0;
    unsigned char entry_arr[MAX_DEPTH + 1];
    Py_ssize_t i = 0;
    is_obj[0] = 0;
    state[0] = S_VALUE;
    role[0] = R_NONE;
    key_of[0] = K_ELEMENT;
    entry_arr[0] = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            i++;
            continue;
        }
        unsigned char st = state[depth];
        if (st == S_KEY || st == S_KEY_OR_END) {
            if (c == '}' && st == S_KEY_OR_END) goto close;
            if (c != '"') goto done;
            Py_ssize_t start = i + 1;
            int escaped;
            i = string_end(s, len, start, &escaped);
            if (i < 0 || escaped) goto done; /* an escape could spell another name */
            Py_ssize_t n = i - 1 - start;
            int base = key_base[depth];
            if (nkeys - base >= MAX_KEYS) goto done;
            for (int k = base; k < nkeys; k++) {
                if (keys[k].n == n && memcmp(keys[k].p, s + start, (size_t)n) == 0) goto done;
            }
            if (nkeys == cap) {
                int ncap = cap ? cap * 2 : 256;
                key_t_ *grown = PyMem_RawRealloc(keys, sizeof(key_t_) * (size_t)ncap);
                if (grown == NULL) goto done;
                keys = grown;
                cap = ncap;
            }
            keys[nkeys].p = s + start;
            keys[nkeys].n = n;
            nkeys++;
            if (depth == 1) top_key_is_entry = (n == 5 && memcmp(s + start, "entry", 5) == 0);
            if (pl) key_is_entry = (n == 5 && memcmp(s + start, "entry", 5) == 0);
            if (pl && role[depth] != R_NONE) key_of[depth] = (unsigned char)key_id(s + start, n);
            state[depth] = S_COLON;
            continue;
        }
        if (st == S_COLON) {
            if (c != ':') goto done;
            state[depth] = S_VALUE;
            i++;
            continue;
        }
        if (st == S_AFTER) {
            if (depth == 0) goto done; /* only whitespace after the document */
            if (c == ',') {
                state[depth] = is_obj[depth] ? S_KEY : S_VALUE;
                i++;
                continue;
            }
            if (c == (is_obj[depth] ? '}' : ']')) goto close;
            goto done;
        }
        /* S_VALUE or S_VALUE_OR_END */
        if (c == ']' && st == S_VALUE_OR_END) goto close;
        if (pl && entry_arr[depth] && pl->max_entries >= 0 && ++pl->entries > pl->max_entries) {
            pl->too_many = 1; /* counted before the element is read: nothing more is built */
            goto done;
        }
        state[depth] = S_AFTER;
        if (c == '"') {
            int escaped;
            Py_ssize_t start = i + 1;
            i = string_end(s, len, start, &escaped);
            if (i < 0) goto done;
            if (pl && role[depth] != R_NONE)
                plan_value(pl, role[depth], key_of[depth], s + start, i - 1 - start, escaped);
            continue;
        }
        if (c == '{' || c == '[') {
            if (depth >= MAX_DEPTH) goto done;
            if (depth == 1 && c == '[' && is_obj[1] && top_key_is_entry) in_entry = 1;
            if (depth == 2 && in_entry) span_add(sp, i);
            unsigned char child = R_NONE;
            if (pl) {
                if (depth == 0) {
                    if (c == '{') child = R_TOP;
                    else pl->bad = 1; /* a top-level array is not a Bundle */
                } else {
                    child = plan_open(pl, role[depth], key_of[depth], c == '{', i);
                }
            }
            depth++;
            is_obj[depth] = (c == '{');
            state[depth] = (c == '{') ? S_KEY_OR_END : S_VALUE_OR_END;
            key_base[depth] = nkeys;
            role[depth] = child;
            key_of[depth] = (c == '{') ? K_OTHER : K_ELEMENT;
            entry_arr[depth] = (unsigned char)(c == '[' && is_obj[depth - 1] && key_is_entry);
            i++;
            continue;
        }
        if ((c >= '0' && c <= '9') || c == '-') {
            i = number_end(s, len, i);
            if (i < 0) goto done;
        } else if (c == 't' && i + 4 <= len && memcmp(s + i, "true", 4) == 0) {
            i += 4;
        } else if (c == 'f' && i + 5 <= len && memcmp(s + i, "false", 5) == 0) {
            i += 5;
        } else if (c == 'n' && i + 4 <= len && memcmp(s + i, "null", 4) == 0) {
            i += 4;
        } else {
            goto done;
        }
        if (pl && role[depth] != R_NONE) plan_value(pl, role[depth], key_of[depth], NULL, 0, 1);
        continue;
    close:
        /* c closes the container at this depth (checked by the caller's state) */
        nkeys = key_base[depth];
        if (depth == 3 && in_entry) span_add(sp, i + 1);
        if (depth == 2 && in_entry) in_entry = 0;
        if (pl && role[depth] == R_ENTRY) plan_entry_done(pl, i + 1);
        depth--;
        i++;
    }
    ok = (depth == 0 && state[0] == S_AFTER);
done:
    PyMem_RawFree(keys);
    return ok;
}

static PyObject *proof(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = scan((const unsigned char *)view.buf, view.len, NULL, NULL);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

/* entry_spans(buffer) -> list[int] | None: proof() and, when it holds, the start and end
   offsets of each element of the top-level "entry" array that is an object or array
   ([start0, end0, start1, end1, ...]; a scalar element is not listed, so callers compare
   counts). None when the proof does not hold. */
static PyObject *entry_spans(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    spans_t sp = {NULL, 0, 0, 0};
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = scan((const unsigned char *)view.buf, view.len, &sp, NULL);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *out = NULL;
    if (!ok || sp.overflow) {
        PyMem_RawFree(sp.at);
        Py_RETURN_NONE;
    }
    out = PyList_New(sp.n);
    for (Py_ssize_t k = 0; out != NULL && k < sp.n; k++) {
        PyObject *v = PyLong_FromSsize_t(sp.at[k]);
        if (v == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, v);
    }
    PyMem_RawFree(sp.at);
    return out;
}

static PyObject *TooManyEntries;

/* plan(buffer, codes, max_full_url, max_entries=-1) -> list[int] | None: proof() and, when it
   holds for a Bundle object with an "entry" array of objects, [position, start, end, ...] of
   each entry the record builder may read (see plan_open). ``codes``: a tuple of bytes, the
   protocol's Observation codes. None: take the generic path. Raises TooManyEntries, without
   building anything, as soon as the arrays named "entry" (any depth: nested Bundles too) hold
   more than ``max_entries`` elements (-1: no cap); entry_count() counts them the same way. */
static PyObject *plan(PyObject *self, PyObject *args) {
    Py_buffer view;
    PyObject *codes;
    Py_ssize_t max_full_url, max_entries = -1;
    if (!PyArg_ParseTuple(args, "y*O!n|n", &view, &PyTuple_Type, &codes, &max_full_url,
                          &max_entries))
        return NULL;
    Py_ssize_t ncodes = PyTuple_GET_SIZE(codes);
    const char **code_p = PyMem_Malloc(sizeof(char *) * (size_t)(ncodes + 1));
    Py_ssize_t *code_n = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(ncodes + 1));
    if (code_p == NULL || code_n == NULL) {
        PyMem_Free(code_p);
        PyMem_Free(code_n);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t k = 0; k < ncodes; k++) {
        PyObject *code = PyTuple_GET_ITEM(codes, k);
        if (!PyBytes_Check(code)) {
            PyMem_Free(code_p);
            PyMem_Free(code_n);
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError, "codes must be a tuple of bytes");
            return NULL;
        }
        code_p[k] = PyBytes_AS_STRING(code);
        code_n[k] = PyBytes_GET_SIZE(code);
    }
    plan_t pl;
    memset(&pl, 0, sizeof(pl));
    pl.code_p = code_p;
    pl.code_n = code_n;
    pl.ncodes = ncodes;
    pl.max_full_url = max_full_url;
    pl.max_entries = max_entries;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = scan((const unsigned char *)view.buf, view.len, NULL, &pl);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyMem_Free(code_p);
    PyMem_Free(code_n);
    if (pl.too_many) {
        PyMem_RawFree(pl.out.at);
        PyErr_Format(TooManyEntries, "more than %zd entries", max_entries);
        return NULL;
    }
    if (!ok || pl.bad || !pl.top_bundle || !pl.have_entry || pl.out.overflow) {
        PyMem_RawFree(pl.out.at);
        Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(pl.out.n);
    for (Py_ssize_t k = 0; out != NULL && k < pl.out.n; k++) {
        PyObject *v = PyLong_FromSsize_t(pl.out.at[k]);
        if (v == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, v);
    }
    PyMem_RawFree(pl.out.at);
    return out;
}

/* How many elements the arrays that are the value of a member named "entry" hold, at any
   depth (a Parameters' patientData, a batch-response's nested Bundles, a CDS prefetch),
   counting no further than ``stop`` + 1. Tolerant: it reads any bytes without a syntax check
   (on JSON it counts what plan() counts), so the generic path can refuse an amplification
   before decoding. A member name with an escape counts as "entry" (it could spell it). */
#define COUNT_DEPTH 1024
static Py_ssize_t count_entries(const unsigned char *s, Py_ssize_t len, Py_ssize_t stop) {
    unsigned char is_obj[COUNT_DEPTH], is_entry[COUNT_DEPTH], fresh[COUNT_DEPTH];
    Py_ssize_t depth = 0, count = 0, i = 0;
    int key = 0, named = 0; /* the last string could be "entry"; it was a member's name */
    is_obj[0] = is_entry[0] = fresh[0] = 0;
    while (i < len && count <= stop) {
        unsigned char c = s[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            i++;
            continue;
        }
        int tracked = depth < COUNT_DEPTH;
        if (tracked && is_entry[depth] && fresh[depth] && c != ']' && c != ',') count++;
        if (tracked) fresh[depth] = 0;
        if (c == '"') {
            Py_ssize_t start = ++i;
            int escaped = 0;
            while (i < len && s[i] != '"') {
                if (s[i] == '\\') {
                    escaped = 1;
                    i++;
                }
                i++;
            }
            key = escaped || (i - start == 5 && i < len && memcmp(s + start, "entry", 5) == 0);
            i++;
            continue;
        }
        if (c == ':') {
            named = key;
        } else if (c == '{' || c == '[') {
            int parent_obj = tracked && is_obj[depth];
            depth++;
            if (depth < COUNT_DEPTH) {
                is_obj[depth] = (unsigned char)(c == '{');
                is_entry[depth] = (unsigned char)(c == '[' && parent_obj && named);
                fresh[depth] = 1;
            }
            named = 0;
        } else if (c == '}' || c == ']') {
            if (depth > 0) depth--;
            named = 0;
        } else if (c == ',') {
            if (tracked) fresh[depth] = 1;
            named = 0;
        }
        key = 0;
        i++;
    }
    return count;
}

/* entry_count(buffer, stop) -> int: count_entries() without the GIL. */
static PyObject *entry_count(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t stop, n;
    if (!PyArg_ParseTuple(args, "y*n", &view, &stop)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    n = count_entries((const unsigned char *)view.buf, view.len, stop);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"proof", proof, METH_O, "True only when no JSON object in the buffer names a key twice."},
    {"entry_spans", entry_spans, METH_O, "proof(), and where the top-level entry elements are."},
    {"plan", plan, METH_VARARGS, "proof(), and which Bundle entries the record builder may read."},
    {"entry_count", entry_count, METH_VARARGS, "Elements of the arrays named entry, up to stop+1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_keyscan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__keyscan(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    TooManyEntries = PyErr_NewException("service._keyscan.TooManyEntries", PyExc_ValueError, NULL);
    if (TooManyEntries == NULL || PyModule_AddObjectRef(m, "TooManyEntries", TooManyEntries) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
