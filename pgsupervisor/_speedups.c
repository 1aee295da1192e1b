/* Native versions of the shape cache's hottest loops.
 *
 * Each has a pure-Python twin that is its specification (and the fallback
 * when this module is not built; tests/unit/test_speedups.py holds them
 * to it): `load_text` is `values._py_tuple_loader`, `route_changes` the
 * tenant paths of `ShapeCache._on_transaction` (inserts and updates on a
 * route whose every shape is one `column = value`, with `Shape._open` for
 * a shape neither buffering nor filtering), `settle` is
 * `rows.settle_pass`. They hold the GIL throughout; whatever they cannot
 * decide they hand back to the Python path untouched.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <structmember.h>

enum {
    S_OP,
    S_NEW,
    S_OLD,
    S_COLS,
    S_BUF,
    S_POS,
    S_TUPLE,
    S_CACHE,
    S_RAW,
    S_TOAST,
    S_LAYOUT,
    S_ROWS,
    S_YOUNG,
    S_OLD_ROWS,
    S_BUFFER,
    S_FILTERING,
    S_APPLIED_LSN,
    S_OFFSET,
    S_INSERT,
    S_UPDATE,
    S_OPEN,
    S_END_LSN,
    S_NEXT,
    S_SETTLE,
    S_FOREVER,
    NAMES
};
static PyObject *names[NAMES];


/* Where the attributes these loops read live in their objects: for a
 * name a type declares in __slots__ (a member descriptor: `Row`, `Change`,
 * `RowStore`), the offset of its slot, read directly; anything else (a
 * `Shape`'s __dict__, a property) goes through getattr. Each entry holds
 * its type, so a cached address cannot come to name another type. */
static struct {
    PyTypeObject *type;  /* the type last seen with this name */
    Py_ssize_t offset;   /* 0: not a plain slot */
} slot_cache[NAMES];

static Py_ssize_t slot_lookup(PyTypeObject *type, int name);

static inline Py_ssize_t
slot_offset(PyTypeObject *type, int name)
{
    if (slot_cache[name].type == type)
        return slot_cache[name].offset;
    return slot_lookup(type, name);
}

static Py_ssize_t
slot_lookup(PyTypeObject *type, int name)
{
    Py_ssize_t offset = 0;
    PyObject *descr = PyObject_GetAttr((PyObject *)type, names[name]);
    if (descr == NULL)
        PyErr_Clear();
    else if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY))
            offset = member->offset;
    }
    Py_XDECREF(descr);
    Py_XSETREF(slot_cache[name].type, (PyTypeObject *)Py_NewRef(type));
    slot_cache[name].offset = offset;
    return offset;
}

/* getattr(obj, name), a new reference; NULL with an exception if unset. */
static inline PyObject *
get(PyObject *obj, int name)
{
    Py_ssize_t offset = slot_offset(Py_TYPE(obj), name);
    if (offset > 0) {
        PyObject *value = *(PyObject **)((char *)obj + offset);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(obj, names[name]);
}

/* setattr(obj, name, value). */
static inline int
set(PyObject *obj, int name, PyObject *value)
{
    Py_ssize_t offset = slot_offset(Py_TYPE(obj), name);
    if (offset > 0) {
        Py_XSETREF(*(PyObject **)((char *)obj + offset), Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(obj, names[name], value);
}

/* The TupleData at *pos* of *data* split into a list of bytes, one per
 * column, when it has *ncols* columns, each sent as text ('t'), and ends
 * the buffer. NULL without an exception when it does not (a NULL, an
 * unchanged TOAST value, a short or overlong message); NULL with one on
 * MemoryError. */
static PyObject *
split_text(const unsigned char *p, Py_ssize_t size, Py_ssize_t pos,
           Py_ssize_t ncols)
{
    if (pos < 0 || pos > size - 2 || ((p[pos] << 8) | p[pos + 1]) != ncols)
        return NULL;
    pos += 2;
    PyObject *list = PyList_New(ncols);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (pos > size - 5 || p[pos] != 't')
            goto not_text;
        uint32_t len = ((uint32_t)p[pos + 1] << 24) |
                       ((uint32_t)p[pos + 2] << 16) |
                       ((uint32_t)p[pos + 3] << 8) | (uint32_t)p[pos + 4];
        pos += 5;
        if ((uint64_t)len > (uint64_t)(size - pos))
            goto not_text;
        PyObject *value =
            PyBytes_FromStringAndSize((const char *)p + pos, (Py_ssize_t)len);
        if (value == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, value);
        pos += (Py_ssize_t)len;
    }
    if (pos == size)
        return list;
not_text:
    Py_DECREF(list);
    return NULL;
}

/* load(split) for the TupleData at pos of buf, or None (see split_text). */
static PyObject *
load_from(PyObject *buf, Py_ssize_t pos, Py_ssize_t ncols, PyObject *load)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *list =
        split_text((const unsigned char *)view.buf, view.len, pos, ncols);
    PyBuffer_Release(&view);
    if (list == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *values = PyObject_CallOneArg(load, list);
    Py_DECREF(list);
    return values;
}

/* An int argument as a Py_ssize_t; -1 with an exception if it is not. */
static int
ssize_arg(PyObject *arg, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(arg);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

PyDoc_STRVAR(load_text_doc,
"load_text(ncols, load, buf, pos) -> load([value bytes, ...]) | None\n\n"
"Split the pgoutput TupleData at *pos* of *buf* and load it, when it has\n"
"*ncols* columns, each sent as text, and ends *buf*; else None.");

static PyObject *
load_text(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "load_text takes 4 arguments");
        return NULL;
    }
    Py_ssize_t ncols, pos;
    if (ssize_arg(args[0], &ncols) < 0 || ssize_arg(args[3], &pos) < 0)
        return NULL;
    return load_from(args[2], pos, ncols, args[1]);
}

/* The route a run of changes is applied on (see route_changes). */
typedef struct {
    PyObject *row_type, *relation, *load, *by_value, *taking, *tx, *end_lsn,
        *listening, *take;
    Py_ssize_t ncols, at;
    int anyone;
} Route;

/* A row's values in column order, as `Row._loaded` gives them, when it is
 * a stream Row of the route's relation not read yet, with every value
 * present and loading. NULL without an exception: the Python path takes
 * it; with one: MemoryError. */
static PyObject *
row_values(Route *r, PyObject *row)
{
    PyObject *values = NULL, *attr = NULL;
    if (row == NULL || (PyObject *)Py_TYPE(row) != r->row_type)
        return NULL;
    attr = get(row, S_COLS);
    if (attr != r->relation)
        goto done;
    Py_SETREF(attr, get(row, S_TUPLE));
    if (attr != Py_None)
        goto done;
    Py_SETREF(attr, get(row, S_CACHE));
    if (attr != Py_None && (attr == NULL || PyObject_IsTrue(attr) != 0))
        goto done;
    Py_SETREF(attr, get(row, S_BUF));
    if (attr == NULL)
        goto done;
    if (attr != Py_None) {  /* the message: split and load */
        PyObject *pos = get(row, S_POS);
        if (pos == NULL)
            goto done;
        Py_ssize_t at = PyLong_AsSsize_t(pos);
        Py_DECREF(pos);
        if (at == -1 && PyErr_Occurred())
            goto done;
        values = load_from(attr, at, r->ncols, r->load);
    }
    else {  /* split when fed (an update's old row): load */
        Py_SETREF(attr, get(row, S_TOAST));
        if (attr != Py_False)
            goto done;
        Py_SETREF(attr, get(row, S_RAW));
        if (attr == NULL || !PyList_CheckExact(attr) ||
            PyList_GET_SIZE(attr) != r->ncols)
            goto done;
        values = PyObject_CallOneArg(r->load, attr);
    }
    if (values != NULL && values != Py_None && !PyTuple_CheckExact(values))
        Py_SETREF(values, PySequence_Tuple(values));
    if (values == Py_None)
        Py_CLEAR(values);
done:
    Py_XDECREF(attr);
    if (values == NULL && PyErr_Occurred() &&
        !PyErr_ExceptionMatches(PyExc_MemoryError))
        PyErr_Clear();  /* a value psycopg cannot load: the Python path */
    return values;
}

/* `Shape._open` for a shape neither buffering nor filtering, when no one
 * listens: False if it applied this transaction already, else None, after
 * moving its applied LSN and offset. NULL without an exception: the shape
 * needs `_open` itself. */
static PyObject *
open_quiet(Route *r, PyObject *shape)
{
    PyObject *attr = get(shape, S_BUFFER), *out = NULL;
    if (attr != Py_None)
        goto done;
    Py_SETREF(attr, get(shape, S_FILTERING));
    if (attr != Py_False)
        goto done;
    Py_SETREF(attr, get(shape, S_APPLIED_LSN));
    if (attr == NULL)
        goto done;
    int seen = PyObject_RichCompareBool(r->end_lsn, attr, Py_LE);
    if (seen < 0)
        goto done;
    if (seen) {
        out = Py_NewRef(Py_False);
        goto done;
    }
    Py_SETREF(attr, get(shape, S_OFFSET));
    if (attr == NULL)
        goto done;
    int later = PyObject_RichCompareBool(r->end_lsn, attr, Py_GT);
    /* The applied LSN last: if a write fails, `_open` does it all again. */
    if (later < 0 || (later && set(shape, S_OFFSET, r->end_lsn) < 0) ||
        set(shape, S_APPLIED_LSN, r->end_lsn) < 0)
        goto done;
    out = Py_NewRef(Py_None);
done:
    Py_XDECREF(attr);
    if (out == NULL)
        PyErr_Clear();
    return out;
}

/* Open each of *targets* for this transaction once (as the Python loop's
 * `taking`): each then takes the change (out None: here; a list of
 * ShapeChanges: through `take`) or skips it (False). -1: `_open` raised. */
static int
open_all(Route *r, PyObject *targets)
{
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(targets); k++) {
        PyObject *shape = PyTuple_GET_ITEM(targets, k);
        PyObject *out = PyDict_GetItemWithError(r->taking, shape);
        if (out == NULL) {
            if (PyErr_Occurred())
                return -1;
            int emit = 0;
            if (r->anyone) {
                PyObject *yes = PyObject_CallOneArg(r->listening, shape);
                if (yes == NULL)
                    return -1;
                emit = PyObject_IsTrue(yes);
                Py_DECREF(yes);
                if (emit < 0)
                    return -1;
            }
            out = emit ? NULL : open_quiet(r, shape);
            if (out == NULL &&
                (out = PyObject_CallMethodObjArgs(
                     shape, names[S_OPEN], r->tx, emit ? Py_True : Py_False, NULL)) == NULL)
                return -1;
            int stored = PyDict_SetItem(r->taking, shape, out);
            Py_DECREF(out);  /* taking holds it */
            if (stored < 0)
                return -1;
        }
    }
    return 0;
}

/* *shape*'s out for this transaction: 0 None (apply here), 1 a list
 * (apply through `take`), -1 False (skipped, or failed on a change). */
static int
out_of(Route *r, PyObject *shape)
{
    PyObject *out = PyDict_GetItemWithError(r->taking, shape);
    if (out == Py_None)
        return 0;
    return (out == NULL || out == Py_False) ? -1 : 1;
}

/* `ShapeCache._take(taking, failed, shape, op, new, old, out)` (bound to
 * the first two): it builds the shape's ShapeChanges, and deals with a
 * shape that fails as the Python loop does. -1 only if it raised. */
static int
take_one(Route *r, PyObject *shape, int op, PyObject *new, PyObject *old)
{
    PyObject *out = PyDict_GetItemWithError(r->taking, shape);
    if (out == NULL)
        return -1;
    PyObject *args[5] = {shape, names[op], new, old == NULL ? Py_None : old, out};
    PyObject *done = PyObject_Vectorcall(r->take, args, 5, NULL);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

/* A write here failed (a broken layout, no memory): the shape takes the
 * change through `take` instead, which applies it or fails the shape as
 * the Python loop would. */
static int
retake(Route *r, PyObject *shape, int op, PyObject *new, PyObject *old)
{
    if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_MemoryError))
        return -1;
    PyErr_Clear();
    return take_one(r, shape, op, new, old);
}

/* What applying a change to one shape reads: its `Layout` (key_of and
 * values_of on value tuples) and its `RowStore` (the young dict, where
 * writes go, and the big one). */
typedef struct {
    PyObject *layout, *rows, *young, *old;
} Held;

static void
held_clear(Held *h)
{
    Py_CLEAR(h->layout);
    Py_CLEAR(h->rows);
    Py_CLEAR(h->young);
    Py_CLEAR(h->old);
}

static int
held_of(PyObject *shape, Held *h)
{
    h->layout = get(shape, S_LAYOUT);
    if (h->layout == NULL || !PyTuple_Check(h->layout) ||
        PyTuple_GET_SIZE(h->layout) != 3)
        return -1;
    if ((h->rows = get(shape, S_ROWS)) == NULL ||
        (h->young = get(h->rows, S_YOUNG)) == NULL ||
        !PyDict_CheckExact(h->young))
        return -1;
    if ((h->old = get(h->rows, S_OLD_ROWS)) == NULL || !PyDict_CheckExact(h->old))
        return -1;
    return 0;
}

static PyObject *
key_of(Held *h, PyObject *values)
{
    return PyObject_CallOneArg(PyTuple_GET_ITEM(h->layout, 1), values);
}

static PyObject *
values_of(Held *h, PyObject *values)
{
    return PyObject_CallOneArg(PyTuple_GET_ITEM(h->layout, 2), values);
}

/* Whether the collector may stop tracking *tuple*: it holds no object it
 * tracks or may track (`_PyTuple_MaybeUntrack`'s test, made now instead
 * of at the tuple's first collection). */
static int
untrackable(PyObject *tuple)
{
    if (!PyTuple_CheckExact(tuple))
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (PyObject_IS_GC(item) &&
            (!PyTuple_CheckExact(item) || PyObject_GC_IsTracked(item)))
            return 0;
    }
    return 1;
}

/* `RowStore.__setitem__`. A row and key of atomic values are untracked
 * and go straight into the big dict, which stays untracked, as settling
 * would put them there after a collection; the young dict's older row
 * for the key, which would shadow it, is dropped. Other rows go to the
 * young dict, settled past its limit. */
static int
held_set(Held *h, PyObject *key, PyObject *row)
{
    PyObject *forever = get(h->rows, S_FOREVER);
    if (forever == NULL)
        return -1;
    Py_DECREF(forever);
    if (forever == Py_False && untrackable(row) && untrackable(key)) {
        if (PyObject_GC_IsTracked(row))
            PyObject_GC_UnTrack(row);
        if (PyObject_GC_IsTracked(key))
            PyObject_GC_UnTrack(key);
        int shadowed = PyDict_Contains(h->young, key);
        if (shadowed < 0 || (shadowed && PyDict_DelItem(h->young, key) < 0))
            return -1;
        return PyDict_SetItem(h->old, key, row);
    }
    if (PyDict_SetItem(h->young, key, row) < 0)
        return -1;
    PyObject *limit = get(h->rows, S_NEXT);
    if (limit == NULL)
        return -1;
    Py_ssize_t next = PyLong_AsSsize_t(limit);
    Py_DECREF(limit);
    if (next == -1 && PyErr_Occurred())
        return -1;
    if (PyDict_GET_SIZE(h->young) <= next)
        return 0;
    PyObject *done = PyObject_CallMethodNoArgs(h->rows, names[S_SETTLE]);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

/* `RowStore.get`: borrowed, NULL if absent (or on error). */
static PyObject *
held_get(Held *h, PyObject *key)
{
    PyObject *row = PyDict_GetItemWithError(h->young, key);
    if (row == NULL && !PyErr_Occurred())
        row = PyDict_GetItemWithError(h->old, key);
    return row;
}

/* `RowStore.pop` without the value. */
static int
held_del(Held *h, PyObject *key)
{
    PyObject *dicts[2] = {h->young, h->old};
    for (int d = 0; d < 2; d++) {
        int in = PyDict_Contains(dicts[d], key);  /* no KeyError to build */
        if (in < 0 || (in && PyDict_DelItem(dicts[d], key) < 0))
            return -1;
    }
    return 0;
}

/* The insert of *values* for each target: `Shape._take`'s insert on a
 * fast route (the shape was found by its whole clause, so the row
 * matches), through `take` for a shape with ShapeChanges to build. -1:
 * `take` raised. */
static int
apply_insert(Route *r, PyObject *targets, PyObject *values)
{
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(targets); k++) {
        PyObject *shape = PyTuple_GET_ITEM(targets, k);
        int out = out_of(r, shape);
        if (out > 0 && take_one(r, shape, S_INSERT, values, NULL) < 0)
            return -1;
        if (out != 0)
            continue;
        Held h = {NULL, NULL, NULL, NULL};
        PyObject *key = NULL, *row = NULL;
        int done = -1;
        if (held_of(shape, &h) == 0 && (key = key_of(&h, values)) != NULL &&
            (row = values_of(&h, values)) != NULL)
            done = held_set(&h, key, row);
        held_clear(&h);
        Py_XDECREF(key);
        Py_XDECREF(row);
        if (done < 0 && retake(r, shape, S_INSERT, values, NULL) < 0)
            return -1;
    }
    return 0;
}

/* `Shape._update` on value tuples for each target (through `take` for a
 * shape with ShapeChanges to build); *now* holds the shapes the new row
 * matches. -1: `take` raised. */
static int
apply_update(Route *r, PyObject *targets, PyObject *now, PyObject *new,
             PyObject *old)
{
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(targets); k++) {
        PyObject *shape = PyTuple_GET_ITEM(targets, k);
        int out = out_of(r, shape);
        if (out > 0 && take_one(r, shape, S_UPDATE, new, old) < 0)
            return -1;
        if (out != 0)
            continue;
        Held h = {NULL, NULL, NULL, NULL};
        PyObject *old_key = NULL, *new_key = NULL, *row = NULL;
        int done = -1;
        int keep = now == NULL ? 0 : PySequence_Contains(now, shape);
        if (keep < 0 || held_of(shape, &h) < 0 ||
            (old_key = key_of(&h, old)) == NULL)
            goto next;
        PyObject *held = held_get(&h, old_key);
        if (held == NULL && PyErr_Occurred())
            goto next;
        if (!keep) {  /* moved out, or was never here */
            done = held == NULL ? 0 : held_del(&h, old_key);
            goto next;
        }
        if ((new_key = key_of(&h, new)) == NULL ||
            (row = values_of(&h, new)) == NULL)
            goto next;
        if (held == NULL) {  /* moved in */
            done = held_set(&h, new_key, row);
            goto next;
        }
        Py_INCREF(held);  /* a write may drop the dict's reference */
        int same = PyObject_RichCompareBool(new_key, old_key, Py_EQ);
        int unchanged = same > 0 ? PyObject_RichCompareBool(row, held, Py_EQ) : 0;
        Py_DECREF(held);
        if (same < 0 || unchanged < 0 || (!same && held_del(&h, old_key) < 0))
            goto next;
        done = unchanged ? 0 : held_set(&h, new_key, row);
    next:
        held_clear(&h);
        Py_XDECREF(old_key);
        Py_XDECREF(new_key);
        Py_XDECREF(row);
        if (done < 0 && retake(r, shape, S_UPDATE, new, old) < 0)
            return -1;
    }
    return 0;
}

/* The shapes indexed under the value at the route's position of *values*:
 * a borrowed tuple, NULL if none; -1 in *error* when the value cannot be
 * looked up (unhashable). */
static PyObject *
members_of(Route *r, PyObject *values, int *error)
{
    if (r->at >= PyTuple_GET_SIZE(values)) {
        *error = -1;
        return NULL;
    }
    PyObject *members =
        PyDict_GetItemWithError(r->by_value, PyTuple_GET_ITEM(values, r->at));
    if (members == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        *error = -1;
    }
    else if (members != NULL && !PyTuple_Check(members)) {
        *error = -1;
        return NULL;
    }
    return members;
}

/* Apply one change. 0: applied; 1: the Python path must take it (this
 * only opened shapes, as recorded in `taking`: nothing is applied twice);
 * -1: an exception to propagate. */
static int
route_one(Route *r, PyObject *change)
{
    PyObject *op = NULL, *new = NULL, *old = NULL, *values = NULL,
             *old_values = NULL, *targets = NULL;
    int result = 1, error = 0;
    if ((op = get(change, S_OP)) == NULL ||
        (new = get(change, S_NEW)) == NULL ||
        (values = row_values(r, new)) == NULL)
        goto done;
    PyObject *now = members_of(r, values, &error);
    if (error)
        goto done;
    if (op == names[S_INSERT] || PyUnicode_Compare(op, names[S_INSERT]) == 0) {
        if (now == NULL) {
            result = 0;  /* no shape holds this value */
            goto done;
        }
        if ((result = open_all(r, now)) != 0)
            goto done;
        result = apply_insert(r, now, values) < 0 ? -1 : 0;
        goto done;
    }
    if (PyErr_Occurred() || !(op == names[S_UPDATE] || PyUnicode_Compare(op, names[S_UPDATE]) == 0))
        goto done;
    if ((old = get(change, S_OLD)) == NULL || old == Py_None ||
        (old_values = row_values(r, old)) == NULL)
        goto done;
    PyObject *was = members_of(r, old_values, &error);
    if (error)
        goto done;
    if (was == NULL && now == NULL) {
        result = 0;
        goto done;
    }
    /* Each shape is indexed under one value: was and now share none
     * unless they are the same tuple. */
    if (was == NULL || now == NULL || was == now)
        targets = Py_NewRef(was == NULL ? now : was);
    else if ((targets = PySequence_Concat(was, now)) == NULL)
        goto done;
    if ((result = open_all(r, targets)) != 0)
        goto done;
    result = apply_update(r, targets, now, values, old_values) < 0 ? -1 : 0;
done:
    Py_XDECREF(op);
    Py_XDECREF(new);
    Py_XDECREF(old);
    Py_XDECREF(values);
    Py_XDECREF(old_values);
    Py_XDECREF(targets);
    if (result == 1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_MemoryError))
            return -1;
        PyErr_Clear();
    }
    return result;
}

#define RUN 256  /* changes per call at most */

PyDoc_STRVAR(route_changes_doc,
"route_changes(changes, start, row_type, relation, ncols, load, at, by_value,\n"
"              taking, tx, anyone, listening, take) -> int\n\n"
"Apply changes[start:] (inserts and updates of stream rows of *relation*)\n"
"to the shapes indexed by the value at position *at*, as the Python loop of\n"
"`ShapeCache._on_transaction` does, up to the first change it must take\n"
"or at most 256 changes; return the index of the next change.");

static PyObject *
route_changes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "route_changes takes 13 arguments");
        return NULL;
    }
    Route r = {
        .row_type = args[2], .relation = args[3], .load = args[5],
        .by_value = args[7], .taking = args[8], .tx = args[9],
        .listening = args[11], .take = args[12],
    };
    PyObject *changes = args[0];
    if (!PyList_CheckExact(changes) || !PyDict_CheckExact(r.by_value) ||
        !PyDict_CheckExact(r.taking) || !PyCallable_Check(r.take)) {
        PyErr_SetString(PyExc_TypeError,
                        "route_changes: changes a list, by_value and taking"
                        " dicts, take a callable");
        return NULL;
    }
    Py_ssize_t i;
    if (ssize_arg(args[1], &i) < 0 || ssize_arg(args[4], &r.ncols) < 0 ||
        ssize_arg(args[6], &r.at) < 0)
        return NULL;
    if ((r.anyone = PyObject_IsTrue(args[10])) < 0)
        return NULL;
    if ((r.end_lsn = get(r.tx, S_END_LSN)) == NULL)
        return NULL;
    /* A bounded run per call: between calls the interpreter may hand the
     * GIL to another thread, so a million-row transaction does not hold
     * the stream's and the application's threads for its whole length. */
    Py_ssize_t stop = i + RUN;
    for (; i >= 0 && i < stop && i < PyList_GET_SIZE(changes); i++) {
        PyObject *change = Py_NewRef(PyList_GET_ITEM(changes, i));
        int result = route_one(&r, change);
        Py_DECREF(change);
        if (result < 0) {
            Py_DECREF(r.end_lsn);
            return NULL;
        }
        if (result > 0)
            break;
    }
    Py_DECREF(r.end_lsn);
    return PyLong_FromSsize_t(i);
}

/* Whether *obj*, a tuple (or any iterable), holds an object the cyclic
 * collector tracks. -1 on error. */
static int
holds_tracked(PyObject *obj)
{
    PyObject *seq = PySequence_Fast(obj, "a row or key must be a sequence");
    if (seq == NULL)
        return -1;
    int found = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && !found; i++)
        found = PyObject_GC_IsTracked(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    return found;
}

PyDoc_STRVAR(settle_doc,
"settle(young, old) -> (young, waiting)\n\n"
"`RowStore._settle`'s pass: move the rows of *young* the collector no longer\n"
"tracks (row and key) into *old*; return a new dict of the others and how\n"
"many of those hold a value it tracks.");

static PyObject *
settle(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_CheckExact(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "settle(young: dict, old: dict)");
        return NULL;
    }
    PyObject *young = args[0], *old = args[1], *key, *values;
    PyObject *left = PyDict_New();
    if (left == NULL)
        return NULL;
    Py_ssize_t pos = 0, waiting = 0;
    while (PyDict_Next(young, &pos, &key, &values)) {
        if (!PyObject_GC_IsTracked(values) && !PyObject_GC_IsTracked(key)) {
            if (PyDict_SetItem(old, key, values) < 0)
                goto error;
            continue;
        }
        if (PyDict_SetItem(left, key, values) < 0)
            goto error;
        int held = holds_tracked(values);
        if (held == 0)
            held = holds_tracked(key);
        if (held < 0)
            goto error;
        waiting += held;
    }
    return Py_BuildValue("(Nn)", left, waiting);
error:
    Py_DECREF(left);
    return NULL;
}

static PyMethodDef methods[] = {
    {"load_text", (PyCFunction)(void (*)(void))load_text, METH_FASTCALL,
     load_text_doc},
    {"route_changes", (PyCFunction)(void (*)(void))route_changes,
     METH_FASTCALL, route_changes_doc},
    {"settle", (PyCFunction)(void (*)(void))settle, METH_FASTCALL, settle_doc},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
#define INTERN(var, text)                                  \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
        return -1;
    INTERN(names[S_OP], "op");
    INTERN(names[S_NEW], "new");
    INTERN(names[S_OLD], "old");
    INTERN(names[S_COLS], "_cols");
    INTERN(names[S_BUF], "_buf");
    INTERN(names[S_POS], "_pos");
    INTERN(names[S_TUPLE], "_tuple");
    INTERN(names[S_CACHE], "_cache");
    INTERN(names[S_RAW], "_raw");
    INTERN(names[S_TOAST], "_toast");
    INTERN(names[S_LAYOUT], "_layout");
    INTERN(names[S_ROWS], "_rows");
    INTERN(names[S_YOUNG], "young");
    INTERN(names[S_OLD_ROWS], "_old");
    INTERN(names[S_BUFFER], "_buffer");
    INTERN(names[S_FILTERING], "_filtering");
    INTERN(names[S_APPLIED_LSN], "_applied_lsn");
    INTERN(names[S_OFFSET], "_offset");
    INTERN(names[S_INSERT], "insert");
    INTERN(names[S_UPDATE], "update");
    INTERN(names[S_OPEN], "_open");
    INTERN(names[S_END_LSN], "end_lsn");
    INTERN(names[S_NEXT], "_next");
    INTERN(names[S_SETTLE], "_settle");
    INTERN(names[S_FOREVER], "_forever");
#undef INTERN
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
#if PY_VERSION_HEX >= 0x030C0000
    /* The interned names and the slot cache are process-wide. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "pgsupervisor._speedups",
    "Native versions of the shape cache's hottest loops.",
    0,
    methods,
    slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module_def);
}
