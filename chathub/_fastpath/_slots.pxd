# CPython's member descriptors (what ``__slots__`` creates): a slot's offset lets compiled
# code read or write it directly instead of through an attribute lookup. Used by _fanout
# (the hub Conn's handle and gzip, a MemberList's cache) and _records (the stores'
# records). Declarations and inline helpers only: there is no _slots module.

from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    PyTypeObject PyMemberDescr_Type
    PyTypeObject* Py_TYPE(object o)

cdef extern from "structmember.h":
    int T_OBJECT_EX


cdef inline PyObject* slot_get(object o, Py_ssize_t off) noexcept:
    """The object in ``o``'s slot at offset ``off`` (borrowed), or NULL if unset."""
    return (<PyObject**>((<char*><PyObject*>o) + off))[0]


cdef inline void slot_replace(object o, Py_ssize_t off, object v) noexcept:
    """Store ``v`` in ``o``'s slot at offset ``off``, releasing what it held."""
    cdef PyObject** slot = <PyObject**>((<char*><PyObject*>o) + off)
    cdef PyObject* old = slot[0]
    Py_INCREF(v)
    slot[0] = <PyObject*>v
    Py_XDECREF(old)
