/* One pass over JSON bytes: a proof that no object names a key twice (service/lean.py).

   proof(buffer) -> bool. True only when every object's member names are pairwise different
   byte strings, no member name holds a backslash (an escape could spell another name), no
   number could overflow a double (an exponent of 3+ digits, or 200+ digits), nesting stays
   within 512 levels (orjson allows 1024) and no object has more than 512 members. Anything else, including
   input that is not well formed, gives False: the caller then takes the generic path
   (service/strict_json.py), which decides. Syntax is not checked here (msgspec and orjson
   check it); the scanner only needs to never read out of bounds and never say True
   wrongly. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH 512
#define MAX_KEYS 512

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

static int scan(const unsigned char *s, Py_ssize_t len, spans_t *sp) {
    /* per level: whether it is an object, and where its keys start in `keys` */
    static __thread unsigned char is_obj[MAX_DEPTH + 1];
    static __thread int key_base[MAX_DEPTH + 1];
    static __thread int expect_key[MAX_DEPTH + 1];
    key_t_ *keys = NULL;
    int nkeys = 0, cap = 0, depth = 0, ok = 0;
    int top_key_is_entry = 0, in_entry = 0; /* in_entry: depth 2 is the entry array */
    Py_ssize_t i = 0;
    is_obj[0] = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c == '"') {
            Py_ssize_t start = ++i;
            int backslash = 0;
            /* most strings hold no backslash: jump to the closing quote with memchr */
            const unsigned char *q = memchr(s + i, '"', (size_t)(len - i));
            if (q != NULL && memchr(s + i, '\\', (size_t)(q - (s + i))) == NULL) {
                i = q - s;
            }
            while (i < len && s[i] != '"') {
                if (s[i] == '\\') {
                    backslash = 1;
                    i++; /* skip the escaped byte */
                }
                i++;
            }
            if (i >= len) goto done; /* unterminated string */
            Py_ssize_t n = i - start;
            i++;
            if (is_obj[depth] && expect_key[depth]) {
                expect_key[depth] = 0;
                if (backslash) goto done;
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
            }
            continue;
        }
        if (c == '{' || c == '[') {
            if (depth >= MAX_DEPTH) goto done;
            if (depth == 1 && c == '[' && is_obj[1] && top_key_is_entry) in_entry = 1;
            if (depth == 2 && in_entry) span_add(sp, i);
            depth++;
            is_obj[depth] = (c == '{');
            key_base[depth] = nkeys;
            expect_key[depth] = (c == '{');
        } else if (c == '}' || c == ']') {
            if (depth == 0 || is_obj[depth] != (c == '}')) goto done;
            nkeys = key_base[depth];
            if (depth == 3 && in_entry) span_add(sp, i + 1);
            if (depth == 2 && in_entry) in_entry = 0;
            depth--;
        } else if (c == ',') {
            if (is_obj[depth]) expect_key[depth] = 1;
        } else if ((c >= '0' && c <= '9') || c == '-') {
            Py_ssize_t start = i, digits = 0;
            while (i < len && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == '-')) {
                digits += (s[i] >= '0' && s[i] <= '9');
                i++;
            }
            if (digits >= 200) goto done;
            if (i < len && (s[i] == 'e' || s[i] == 'E')) {
                i++;
                if (i < len && (s[i] == '+' || s[i] == '-')) i++;
                Py_ssize_t exp_start = i;
                while (i < len && s[i] >= '0' && s[i] <= '9') i++;
                if (i - exp_start >= 3) goto done;
            }
            (void)start;
            continue;
        }
        i++;
    }
    ok = (depth == 0);
done:
    PyMem_RawFree(keys);
    return ok;
}

static PyObject *proof(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = scan((const unsigned char *)view.buf, view.len, NULL);
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
    ok = scan((const unsigned char *)view.buf, view.len, &sp);
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

static PyMethodDef methods[] = {
    {"proof", proof, METH_O, "True only when no JSON object in the buffer names a key twice."},
    {"entry_spans", entry_spans, METH_O, "proof(), and where the top-level entry elements are."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_keyscan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__keyscan(void) { return PyModule_Create(&module); }
