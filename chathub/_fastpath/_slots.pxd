# CPython's member descriptors (what ``__slots__`` creates): a slot's offset lets compiled
# code read or write it directly instead of through an attribute lookup. Used by _fanout
# (the hub Conn's handle and gzip) and _records (the stores' records). Declarations only:
# there is no _slots module.

from cpython.object cimport PyTypeObject


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
