/*
 * router._ngrams: the featurizer's n-gram counter in C, a scorer built on it, and the byte
 * automaton walk of the general language identifier (see `walk` below).
 *
 * router/features.py describes the features; its numpy path is the reference and this module
 * must give the same entries, bit for bit. numpy has to materialise every n-gram of the batch
 * and sort them all to count repeats; here each document is counted on its own in a small
 * hash table that stays in cache, which is several times faster.
 *
 * The table is an ordered linear-probing table: a bucket's home slot is the bucket scaled down
 * to the table size, so homes rise with buckets, and an insertion keeps its run sorted. The
 * whole table stays sorted, and reading it front to back gives the document's entries in the
 * order the reference's global sort gives them. That order is not needed for the counts, but
 * the models sum a document's values in entry order, so matching it makes their floating point
 * results identical too. Probing never wraps: the table has room past its last home for the
 * longest possible run.
 *
 * `score` goes one step further for the router's hot path: it turns each document's counts
 * into TF-IDF values and multiplies them by the models' weights as soon as they are counted,
 * where the numpy path would pack the entries, compute their values, build a sparse matrix and
 * multiply it. It follows Features.weights and the sparse product step by step (same float32
 * and float64 operations, same entry order), so its scores differ from theirs only where C's
 * logf and numpy's vectorised float32 log disagree in the last bit.
 *
 * Only the CPython C API is used (no numpy headers), so building needs a C compiler and
 * Python's headers and nothing else. Counting and scoring run without the GIL and keep no
 * global state.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The constants of router/features.py; they fix every bucket a trained model knows. */
#define RADIX UINT64_C(0x100000001B3)
#define ORDER_SALT UINT64_C(0x9E3779B97F4A7C15)
#define WORD_SALT UINT64_C(0xC2B2AE3D27D4EB4F)
#define BIGRAM_SALT UINT64_C(0x165667B19E3779F9)
#define MIX_1 UINT64_C(0xBF58476D1CE4E5B9)
#define MIX_2 UINT64_C(0x94D049BB133111EB)

#define SPACE 32u
#define SEPARATOR 0u
#define MIN_BITS 8
#define MAX_BITS 24
#define MAX_ORDER 8
#define SMALLEST_TABLE 16

enum block { CHARACTERS = 0, WORDS = 1 };

enum outcome { DONE = 0, OUT_OF_MEMORY, DOCUMENT_TOO_LONG, WRONG_DOCUMENT_COUNT };

/* One distinct bucket of a document; a count of 0 marks an empty slot. */
typedef struct {
    uint32_t bucket;
    uint32_t count;
} Slot;

typedef struct {
    Slot *slots;        /* enough for the largest document of the batch */
    uint64_t *occupied; /* a bit per slot, so emptying the table visits its entries, not every slot */
    size_t span;        /* slots the current block may use */
    unsigned shift;     /* a bucket's home is bucket >> shift */
} Table;

/* The batch's entries in output order, allocated once for the most the batch can have. */
typedef struct {
    int64_t *keys;
    float *counts;
    size_t length;
} Entries;

typedef struct {
    const uint32_t *codes;
    size_t length;
    size_t documents; /* the caller's count, checked against the separators */
    unsigned bits;
    uint32_t times[MAX_ORDER + 1]; /* how often each order is listed (a repeated order counts twice) */
    unsigned longest_order;
    int words;
    int word_pairs;
} Request;

/* What a first pass over the codes learns before anything is allocated. */
typedef struct {
    size_t documents;
    size_t largest; /* most n-gram occurrences in one block of one document */
    size_t entries; /* most entries the whole batch can have */
    int too_long;   /* a document has more n-grams than a slot can count */
} Survey;

/* splitmix64's finaliser, as _mix in features.py: nearby hashes spread over all buckets. */
static inline uint64_t mix(uint64_t hash, uint64_t salt) {
    uint64_t h = hash ^ salt;
    h ^= h >> 30;
    h *= MIX_1;
    h ^= h >> 27;
    h *= MIX_2;
    h ^= h >> 31;
    return h;
}

static inline uint32_t bucket_of(uint64_t mixed, unsigned bits) { return (uint32_t)(mixed >> (64 - bits)); }

static inline unsigned lowest_set_bit(uint64_t word) {
#if defined(__GNUC__) || defined(__clang__)
    return (unsigned)__builtin_ctzll(word);
#else
    unsigned index = 0;
    while ((word & 1) == 0) {
        word >>= 1;
        index++;
    }
    return index;
#endif
}

static size_t power_of_two_at_least(size_t n) {
    size_t size = SMALLEST_TABLE;
    while (size < n) {
        size <<= 1;
    }
    return size;
}

static unsigned log2_of(size_t power_of_two) {
    unsigned log = 0;
    while (((size_t)1 << log) < power_of_two) {
        log++;
    }
    return log;
}

/*
 * Homes for a block of at most `occurrences` n-grams: twice as many as entries keeps the runs
 * short, and a table as large as the bucket space needs no probing at all.
 */
static size_t homes_for(size_t occurrences, unsigned bits) {
    size_t space = (size_t)1 << bits;
    if (occurrences > space / 2) {
        return space;
    }
    size_t homes = power_of_two_at_least(2 * occurrences);
    return homes < space ? homes : space;
}

/*
 * A run starts at its first entry's home, so before the last home, and holds at most half as
 * many entries as there are homes: it ends within half the homes past them.
 */
static size_t slots_for(size_t homes) { return homes + homes / 2 + 1; }

static size_t words_for(size_t slots) { return (slots + 63) / 64; }

/* Prepares the (empty) table for a block of at most `occurrences` n-grams. */
static void table_reset(Table *table, size_t occurrences, unsigned bits) {
    size_t homes = homes_for(occurrences, bits);
    table->shift = bits - log2_of(homes);
    table->span = slots_for(homes);
}

static inline void table_add(Table *table, uint32_t bucket, uint32_t times) {
    Slot *slots = table->slots;
    size_t at = bucket >> table->shift;
    /* Every slot before the home holds a smaller bucket, so the sorted position is at or after it. */
    while (slots[at].count != 0 && slots[at].bucket < bucket) {
        at++;
    }
    if (slots[at].count != 0 && slots[at].bucket == bucket) {
        slots[at].count += times;
        return;
    }
    /* Insert here and move the rest of the run one slot on; runs are short, so no memmove. */
    Slot carried = {bucket, times};
    while (slots[at].count != 0) {
        Slot next = slots[at];
        slots[at] = carried;
        carried = next;
        at++;
    }
    slots[at] = carried;
    table->occupied[at / 64] |= UINT64_C(1) << (at % 64);
}

/* Moves the table's entries, in bucket order, to `taken` and leaves the table empty; returns how many. */
static size_t table_take(Table *table, Slot *taken) {
    Slot *slots = table->slots;
    size_t length = 0;
    size_t words = words_for(table->span);
    for (size_t word = 0; word < words; word++) {
        uint64_t occupied = table->occupied[word];
        table->occupied[word] = 0;
        while (occupied != 0) {
            size_t at = word * 64 + lowest_set_bit(occupied);
            occupied &= occupied - 1;
            taken[length++] = slots[at];
            slots[at].count = 0;
        }
    }
    return length;
}

/* Character n-grams of one document (framed by spaces, no separator inside) that can occur. */
static size_t character_occurrences(const Request *request, size_t length) {
    size_t total = 0;
    for (unsigned order = 1; order <= MAX_ORDER; order++) {
        if (request->times[order] != 0 && length >= order) {
            total += (length - order + 1) * request->times[order];
        }
    }
    return total;
}

/* Words and word pairs: a word needs a blank after it, so there are at most length of them together. */
static size_t word_occurrences(const Request *request, size_t length) {
    return request->words || request->word_pairs ? length : 0;
}

static void count_characters(const Request *request, const uint32_t *codes, size_t length, Table *table) {
    uint64_t powers[MAX_ORDER];
    uint64_t salts[MAX_ORDER + 1];
    powers[0] = 1;
    for (unsigned j = 1; j < MAX_ORDER; j++) {
        powers[j] = powers[j - 1] * RADIX;
    }
    for (unsigned order = 0; order <= MAX_ORDER; order++) {
        salts[order] = ORDER_SALT * order;
    }
    for (size_t start = 0; start < length; start++) {
        size_t reach = length - start < request->longest_order ? length - start : request->longest_order;
        int starts_with_space = codes[start] == SPACE;
        uint64_t hash = 0;
        /* The hash of [start, start + j + 1) extends that of [start, start + j) by one term. */
        for (size_t j = 0; j < reach; j++) {
            uint32_t code = codes[start + j];
            hash += ((uint64_t)code + 1) * powers[j];
            uint32_t times = request->times[j + 1];
            /* An n-gram that starts and ends with a space (or is one) says nothing. */
            if (times != 0 && !(starts_with_space && code == SPACE)) {
                table_add(table, bucket_of(mix(hash, salts[j + 1]), request->bits), times);
            }
        }
    }
}

static void count_words(const Request *request, const uint32_t *codes, size_t length, Table *table) {
    uint64_t previous = 0;
    int has_previous = 0;
    size_t at = 0;
    while (at < length) {
        if (codes[at] == SPACE) {
            at++;
            continue;
        }
        uint64_t hash = 0;
        uint64_t power = 1;
        while (at < length && codes[at] != SPACE) {
            hash += ((uint64_t)codes[at] + 1) * power;
            power *= RADIX;
            at++;
        }
        if (request->words) {
            table_add(table, bucket_of(mix(hash, WORD_SALT), request->bits), 1);
        }
        /* Pairs combine the words' unmixed hashes, as the reference does. */
        if (request->word_pairs && has_previous) {
            table_add(table, bucket_of(mix(previous * RADIX + hash, BIGRAM_SALT), request->bits), 1);
        }
        previous = hash;
        has_previous = 1;
    }
}

/* The working memory of one call: the table, and the entries of the block counted last. */
typedef struct {
    Table table;
    Slot *taken;
} Counter;

/* A block has at most one entry per n-gram occurrence and one per bucket. */
static size_t entries_per_block(const Survey *survey, unsigned bits) {
    size_t space = (size_t)1 << bits;
    return survey->largest < space ? survey->largest : space;
}

/* Allocates a counter for the surveyed documents; 0 when memory ran out (counter_close still frees). */
static int counter_open(Counter *counter, const Survey *survey, unsigned bits) {
    size_t slots = slots_for(homes_for(survey->largest, bits));
    counter->table = (Table){0};
    counter->table.slots = calloc(slots, sizeof(Slot));
    counter->table.occupied = calloc(words_for(slots), sizeof(uint64_t));
    counter->taken = malloc((entries_per_block(survey, bits) + 1) * sizeof(Slot));
    return counter->table.slots != NULL && counter->table.occupied != NULL && counter->taken != NULL;
}

static void counter_close(Counter *counter) {
    free(counter->table.slots);
    free(counter->table.occupied);
    free(counter->taken);
}

/*
 * Counts one block of a document and moves its entries, in bucket order, to counter->taken.
 * Returns how many there are; a block that can have no n-gram is not even reset.
 */
static size_t count_block(
    const Request *request, const uint32_t *codes, size_t length, enum block block, Counter *counter
) {
    size_t occurrences =
        block == CHARACTERS ? character_occurrences(request, length) : word_occurrences(request, length);
    if (occurrences == 0) {
        return 0;
    }
    table_reset(&counter->table, occurrences, request->bits);
    if (block == CHARACTERS) {
        count_characters(request, codes, length, &counter->table);
    } else {
        count_words(request, codes, length, &counter->table);
    }
    return table_take(&counter->table, counter->taken);
}

/* Appends a document's entries, character block first, packed as the reference packs them. */
static void count_document(
    const Request *request, const uint32_t *codes, size_t length, int64_t document, Counter *counter,
    Entries *entries
) {
    for (int block = CHARACTERS; block <= WORDS; block++) {
        size_t taken = count_block(request, codes, length, (enum block)block, counter);
        int64_t prefix = (document << (request->bits + 1)) | ((int64_t)block << request->bits);
        for (size_t i = 0; i < taken; i++) {
            entries->keys[entries->length] = prefix | (int64_t)counter->taken[i].bucket;
            entries->counts[entries->length] = (float)counter->taken[i].count;
            entries->length++;
        }
    }
}

static Survey survey_documents(const Request *request) {
    Survey survey = {0};
    size_t space = (size_t)1 << request->bits;
    size_t begin = 0;
    for (size_t i = 0; i <= request->length; i++) {
        if (i == request->length || request->codes[i] == SEPARATOR) {
            size_t characters = character_occurrences(request, i - begin);
            size_t words = word_occurrences(request, i - begin);
            survey.largest = characters > survey.largest ? characters : survey.largest;
            survey.largest = words > survey.largest ? words : survey.largest;
            /* A block has at most one entry per occurrence and one per bucket. */
            survey.entries += (characters < space ? characters : space) + (words < space ? words : space);
            survey.too_long |= characters > UINT32_MAX || words > UINT32_MAX;
            survey.documents++;
            begin = i + 1;
        }
    }
    return survey;
}

/* Surveys the codes: DONE when they hold as many documents as announced and each can be counted. */
static enum outcome survey_request(const Request *request, Survey *survey, size_t *found) {
    *survey = survey_documents(request);
    *found = survey->documents;
    if (survey->documents != request->documents) {
        return WRONG_DOCUMENT_COUNT;
    }
    return survey->too_long ? DOCUMENT_TOO_LONG : DONE;
}

/* Where the document that starts at `begin` ends: at the next separator or the end of the codes. */
static size_t document_end(const Request *request, size_t begin) {
    size_t end = begin;
    while (end < request->length && request->codes[end] != SEPARATOR) {
        end++;
    }
    return end;
}

/*
 * Runs without the GIL: reads only the request (whose buffer the caller holds) and memory
 * allocated here. *found receives the number of documents in the codes.
 */
static enum outcome count_all(const Request *request, Entries *entries, size_t *found) {
    Survey survey;
    enum outcome outcome = survey_request(request, &survey, found);
    if (outcome != DONE) {
        return outcome;
    }
    if (survey.entries > (size_t)PY_SSIZE_T_MAX / sizeof(int64_t)) {
        return OUT_OF_MEMORY;
    }
    /* Never touched, the unused part of this bound costs address space only. */
    entries->keys = malloc((survey.entries + 1) * sizeof(int64_t));
    entries->counts = malloc((survey.entries + 1) * sizeof(float));
    Counter counter;
    int opened = counter_open(&counter, &survey, request->bits);
    outcome = OUT_OF_MEMORY;
    if (opened && entries->keys != NULL && entries->counts != NULL) {
        size_t begin = 0;
        for (size_t document = 0; document < request->documents; document++) {
            size_t end = document_end(request, begin);
            const uint32_t *codes = request->codes + begin;
            count_document(request, codes, end - begin, (int64_t)document, &counter, entries);
            begin = end + 1;
        }
        outcome = DONE;
    }
    counter_close(&counter);
    return outcome;
}

/* What `score` multiplies the values by; the caller holds both buffers. */
typedef struct {
    const float *idf;     /* one per bucket */
    const float *weights; /* a row of `columns` per bucket, row after row */
    size_t columns;
} Model;

/* Columns summed at once, in a small array that stays in L1 over a block: the packaged models' 16. */
#define TILE 16

static inline void prefetch(const void *address) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(address);
#else
    (void)address;
#endif
}

/* Most n-grams occur a few times in a message: their logarithms are looked up, not computed
 * (logf per entry was a sixth of scoring). The table holds logf's own results, so the values
 * are the same bit for bit. */
#define SMALL_COUNTS 64

static void fill_small_logs(float *small_logs) {
    for (uint32_t count = 0; count < SMALL_COUNTS; count++) {
        small_logs[count] = logf((float)count);
    }
}

/*
 * A block's values as Features.weights computes them: (1 + log count) * idf in float32 (numpy
 * keeps float32 counts and idf in float32), squares summed in float64, each value divided by
 * the norm in float64 and rounded to float32 (as the sparse matrix stores it).
 *
 * The weight rows `accumulate` reads next are scattered over megabytes; asking for them here
 * overlaps their wait with the logarithms (measured: scoring about 40 % faster).
 */
static void weigh_block(
    const Slot *taken, size_t length, const Model *model, const float *small_logs, float *values
) {
    double squares = 0.0;
    for (size_t i = 0; i < length; i++) {
        const float *row = model->weights + (size_t)taken[i].bucket * model->columns;
        prefetch(row);
        prefetch(row + model->columns - 1); /* rows need not start on a cache line */
        uint32_t count = taken[i].count;
        float logarithm = count < SMALL_COUNTS ? small_logs[count] : logf((float)count);
        float value = (1.0f + logarithm) * model->idf[taken[i].bucket];
        values[i] = value;
        squares += (double)(value * value);
    }
    double norm = sqrt(squares);
    if (norm < 1e-12) { /* written so that a NaN passes through, as through np.maximum */
        norm = 1e-12;
    }
    for (size_t i = 0; i < length; i++) {
        values[i] = (float)((double)values[i] / norm);
    }
}

/*
 * Adds value * weight row to `width` (at most TILE) columns of a document's scores, entry after
 * entry in float32: per column, the additions of the sparse product in the same order. A full
 * tile has a constant trip count, which lets the compiler use vector instructions.
 */
static void accumulate_tile(
    float *restrict scores, const float *restrict weights, size_t columns, size_t width, const Slot *taken,
    const float *values, size_t length
) {
    float sums[TILE];
    memcpy(sums, scores, width * sizeof(float));
    if (width == TILE) {
        for (size_t i = 0; i < length; i++) {
            const float *row = weights + (size_t)taken[i].bucket * columns;
            float value = values[i];
            for (size_t k = 0; k < TILE; k++) {
                sums[k] += value * row[k];
            }
        }
    } else {
        for (size_t i = 0; i < length; i++) {
            const float *row = weights + (size_t)taken[i].bucket * columns;
            float value = values[i];
            for (size_t k = 0; k < width; k++) {
                sums[k] += value * row[k];
            }
        }
    }
    memcpy(scores, sums, width * sizeof(float));
}

static void accumulate(
    float *scores, const Model *model, const Slot *taken, const float *values, size_t length
) {
    for (size_t first = 0; first < model->columns; first += TILE) {
        size_t width = model->columns - first < TILE ? model->columns - first : TILE;
        accumulate_tile(scores + first, model->weights + first, model->columns, width, taken, values, length);
    }
}

/* Like count_all, but each document's entries go into its row of `scores` instead of the output. */
static enum outcome score_all(const Request *request, const Model *model, float *scores, size_t *found) {
    Survey survey;
    enum outcome outcome = survey_request(request, &survey, found);
    if (outcome != DONE) {
        return outcome;
    }
    memset(scores, 0, request->documents * model->columns * sizeof(float));
    Counter counter;
    int opened = counter_open(&counter, &survey, request->bits);
    float *values = malloc((entries_per_block(&survey, request->bits) + 1) * sizeof(float));
    float small_logs[SMALL_COUNTS];
    fill_small_logs(small_logs);
    outcome = OUT_OF_MEMORY;
    if (opened && values != NULL) {
        size_t begin = 0;
        for (size_t document = 0; document < request->documents; document++) {
            size_t end = document_end(request, begin);
            const uint32_t *codes = request->codes + begin;
            float *row = scores + document * model->columns;
            for (int block = CHARACTERS; block <= WORDS; block++) {
                size_t taken = count_block(request, codes, end - begin, (enum block)block, &counter);
                weigh_block(counter.taken, taken, model, small_logs, values);
                accumulate(row, model, counter.taken, values, taken);
            }
            begin = end + 1;
        }
        outcome = DONE;
    }
    free(values);
    counter_close(&counter);
    return outcome;
}

/* The buffer's item type code when its items are in native byte order; 0 otherwise. */
static char native_type(const Py_buffer *view) {
    const char *format = view->format;
    if (format == NULL) {
        return 0;
    }
    int native_order = 1;
    if (*format == '@' || *format == '=') {
        format++;
    } else if (*format == '<' || *format == '>' || *format == '!') {
        const uint16_t probe = 1;
        int little_endian = *(const unsigned char *)&probe == 1;
        native_order = (*format == '<') == little_endian;
        format++;
    }
    return native_order && format[0] != '\0' && format[1] == '\0' ? format[0] : 0;
}

static int is_native_uint32(const Py_buffer *view) {
    char type = native_type(view);
    /* itemsize 4 is checked: "L" is 4 bytes on the platforms where long is. */
    return view->itemsize == 4 && view->ndim <= 1 && (type == 'I' || type == 'L');
}

static int is_native_float32(const Py_buffer *view) {
    return view->itemsize == 4 && native_type(view) == 'f';
}

/* Checks the arguments and fills the request; on failure sets ValueError and returns -1. */
static int make_request(
    Request *request, const Py_buffer *codes, Py_ssize_t documents, int bits, const Py_buffer *orders,
    int words, int word_pairs
) {
    if (!is_native_uint32(codes)) {
        PyErr_SetString(PyExc_ValueError, "codes must be a one-dimensional buffer of native uint32");
        return -1;
    }
    if (documents < 1) {
        PyErr_SetString(PyExc_ValueError, "documents must be at least 1");
        return -1;
    }
    if (bits < MIN_BITS || bits > MAX_BITS) {
        PyErr_Format(PyExc_ValueError, "bits must be between %d and %d", MIN_BITS, MAX_BITS);
        return -1;
    }
    memset(request, 0, sizeof(*request));
    request->codes = codes->buf;
    request->length = (size_t)(codes->len / 4);
    request->documents = (size_t)documents;
    request->bits = (unsigned)bits;
    request->words = words;
    request->word_pairs = word_pairs;
    const unsigned char *listed = orders->buf;
    for (Py_ssize_t i = 0; i < orders->len; i++) {
        unsigned order = listed[i];
        if (order < 1 || order > MAX_ORDER) {
            PyErr_Format(PyExc_ValueError, "orders must be between 1 and %d", MAX_ORDER);
            return -1;
        }
        if (request->times[order] == UINT8_MAX) {
            PyErr_SetString(PyExc_ValueError, "an order is listed too often");
            return -1;
        }
        request->times[order]++;
        request->longest_order = order > request->longest_order ? order : request->longest_order;
    }
    return 0;
}

static PyObject *as_bytes(const Entries *entries) {
    PyObject *keys = PyBytes_FromStringAndSize(
        (const char *)entries->keys, (Py_ssize_t)(entries->length * sizeof(int64_t))
    );
    if (keys == NULL) {
        return NULL;
    }
    PyObject *counts = PyBytes_FromStringAndSize(
        (const char *)entries->counts, (Py_ssize_t)(entries->length * sizeof(float))
    );
    if (counts == NULL) {
        Py_DECREF(keys);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, keys, counts);
    Py_DECREF(keys);
    Py_DECREF(counts);
    return result;
}

/* Checks the model's buffers against the request; on failure sets ValueError and returns -1. */
static int make_model(
    Model *model, const Request *request, const Py_buffer *idf, const Py_buffer *weights, Py_ssize_t columns
) {
    size_t space = (size_t)1 << request->bits;
    if (!is_native_float32(idf) || idf->ndim > 1 || (size_t)idf->len != space * sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "idf must be a one-dimensional buffer of 2**bits native float32");
        return -1;
    }
    if (columns < 1) {
        PyErr_SetString(PyExc_ValueError, "columns must be at least 1");
        return -1;
    }
    /* Both the weights and the scores must be sizes Python can have. */
    size_t most = (size_t)PY_SSIZE_T_MAX / sizeof(float);
    if ((size_t)columns > most / space || (size_t)columns > most / request->documents) {
        PyErr_SetString(PyExc_ValueError, "columns is too large");
        return -1;
    }
    /* A flat buffer of the right length is accepted as the matrix, row after row. */
    int shaped = weights->ndim <= 1 ||
                 (weights->ndim == 2 && (size_t)weights->shape[0] == space && weights->shape[1] == columns);
    int sized = (size_t)weights->len == space * (size_t)columns * sizeof(float);
    if (!is_native_float32(weights) || !shaped || !sized) {
        PyErr_SetString(
            PyExc_ValueError, "weights must be a C-contiguous buffer of 2**bits x columns native float32"
        );
        return -1;
    }
    model->idf = idf->buf;
    model->weights = weights->buf;
    model->columns = (size_t)columns;
    return 0;
}

/* Sets the exception for an outcome other than DONE. */
static void raise_for(enum outcome outcome, size_t found, Py_ssize_t documents) {
    switch (outcome) {
    case DONE:
        break;
    case OUT_OF_MEMORY:
        PyErr_NoMemory();
        break;
    case DOCUMENT_TOO_LONG:
        PyErr_SetString(PyExc_ValueError, "a document is too long to count");
        break;
    case WRONG_DOCUMENT_COUNT:
        PyErr_Format(
            PyExc_ValueError, "codes hold %zu documents (separated by U+0000), not %zd", found, documents
        );
        break;
    }
}

/* Borrows an object's memory as a C-contiguous buffer with its item format. */
static int borrow(PyObject *object, Py_buffer *view) {
    return PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT);
}

static PyObject *count(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"codes", "documents", "bits", "orders", "words", "word_pairs", NULL};
    PyObject *codes_object;
    Py_ssize_t documents;
    int bits;
    Py_buffer orders;
    int words;
    int word_pairs;
    (void)module;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "Oniy*pp:count", keywords, &codes_object, &documents, &bits, &orders, &words,
            &word_pairs
        )) {
        return NULL;
    }
    Py_buffer codes;
    if (borrow(codes_object, &codes) != 0) {
        PyBuffer_Release(&orders);
        return NULL;
    }
    Request request;
    int valid = make_request(&request, &codes, documents, bits, &orders, words, word_pairs) == 0;
    PyBuffer_Release(&orders); /* the request keeps its own copy of the orders */
    Entries entries = {0};
    enum outcome outcome = DONE;
    size_t found = 0;
    if (valid) {
        /* The codes stay exported to us until released below, so no Python object is touched. */
        Py_BEGIN_ALLOW_THREADS
        outcome = count_all(&request, &entries, &found);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&codes);
    PyObject *result = NULL;
    if (valid) {
        if (outcome == DONE) {
            result = as_bytes(&entries);
        } else {
            raise_for(outcome, found, documents);
        }
    }
    free(entries.keys);
    free(entries.counts);
    return result;
}

static PyObject *score(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"codes", "documents", "bits",    "orders", "words",
                               "word_pairs", "idf",   "weights", "columns", NULL};
    PyObject *codes_object;
    Py_ssize_t documents;
    int bits;
    Py_buffer orders;
    int words;
    int word_pairs;
    PyObject *idf_object;
    PyObject *weights_object;
    Py_ssize_t columns;
    (void)module;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "Oniy*ppOOn:score", keywords, &codes_object, &documents, &bits, &orders, &words,
            &word_pairs, &idf_object, &weights_object, &columns
        )) {
        return NULL;
    }
    /* Zeroed views release as no-ops, so one exit path serves every failure. */
    Py_buffer codes = {0};
    Py_buffer idf = {0};
    Py_buffer weights = {0};
    Request request;
    Model model;
    int valid = borrow(codes_object, &codes) == 0 && borrow(idf_object, &idf) == 0 &&
                borrow(weights_object, &weights) == 0 &&
                make_request(&request, &codes, documents, bits, &orders, words, word_pairs) == 0 &&
                make_model(&model, &request, &idf, &weights, columns) == 0;
    PyBuffer_Release(&orders);
    /* Filled in place: nothing else can see the new bytes before they are returned. */
    PyObject *result =
        valid ? PyBytes_FromStringAndSize(NULL, documents * columns * (Py_ssize_t)sizeof(float)) : NULL;
    if (result != NULL) {
        float *scores = (float *)PyBytes_AS_STRING(result);
        enum outcome outcome;
        size_t found = 0;
        Py_BEGIN_ALLOW_THREADS
        outcome = score_all(&request, &model, scores, &found);
        Py_END_ALLOW_THREADS
        if (outcome != DONE) {
            Py_CLEAR(result);
            raise_for(outcome, found, documents);
        }
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&idf);
    PyBuffer_Release(&weights);
    return result;
}

/*
 * `walk` serves the general language identifier (router/language.py): py3langid's model is a
 * byte automaton whose states may each mark one feature. Walking it byte by byte is a Python
 * loop there (~300 ns a byte); here it is a table lookup. The tables are checked on every step,
 * so a malformed model raises instead of reading out of bounds.
 */
typedef struct {
    const uint32_t *nextmove;
    Py_ssize_t moves;
    const uint32_t *rowbase;
    const int32_t *output;
    Py_ssize_t states;
} Automaton;

enum walk_outcome { WALKED = 0, WALK_OUT_OF_MEMORY, BAD_TABLES, BAD_ENDS };

/* Appends (document << 32 | feature) for every feature state the walk of each text reaches. */
static enum walk_outcome walk_all(
    const Automaton *automaton, const uint8_t *data, Py_ssize_t size, const int64_t *ends,
    Py_ssize_t texts, int64_t **keys, size_t *found
) {
    size_t capacity = (size_t)size + 1;
    int64_t *out = malloc(capacity * sizeof(int64_t)); /* at most one feature per byte */
    if (out == NULL) {
        return WALK_OUT_OF_MEMORY;
    }
    size_t used = 0;
    int64_t start = 0;
    for (Py_ssize_t text = 0; text < texts; text++) {
        int64_t end = ends[text];
        if (end < start || end > size) {
            free(out);
            return BAD_ENDS;
        }
        uint32_t state = 0;
        for (int64_t at = start; at < end; at++) {
            uint64_t move = (uint64_t)automaton->rowbase[state] + data[at];
            if (move >= (uint64_t)automaton->moves) {
                free(out);
                return BAD_TABLES;
            }
            state = automaton->nextmove[move];
            if ((Py_ssize_t)state >= automaton->states) {
                free(out);
                return BAD_TABLES;
            }
            int32_t feature = automaton->output[state];
            if (feature >= 0) {
                out[used++] = ((int64_t)text << 32) | (int64_t)feature;
            }
        }
        start = end;
    }
    *keys = out;
    *found = used;
    return WALKED;
}

/* A buffer of *count* items of *size* bytes each, or a ValueError naming *what*. */
static int expect_items(const Py_buffer *view, Py_ssize_t size, const char *what) {
    if (view->itemsize != size || view->ndim > 1) {
        PyErr_Format(PyExc_ValueError, "%s must be a flat buffer of %zd-byte items", what, size);
        return -1;
    }
    return 0;
}

static PyObject *walk(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"nextmove", "rowbase", "output", "data", "ends", NULL};
    PyObject *objects[5];
    (void)module;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOOOO:walk", keywords, &objects[0], &objects[1], &objects[2], &objects[3],
            &objects[4]
        )) {
        return NULL;
    }
    Py_buffer nextmove = {0}, rowbase = {0}, output = {0}, data = {0}, ends = {0};
    int valid = borrow(objects[0], &nextmove) == 0 && expect_items(&nextmove, 4, "nextmove") == 0 &&
                borrow(objects[1], &rowbase) == 0 && expect_items(&rowbase, 4, "rowbase") == 0 &&
                borrow(objects[2], &output) == 0 && expect_items(&output, 4, "output") == 0 &&
                borrow(objects[3], &data) == 0 && expect_items(&data, 1, "data") == 0 &&
                borrow(objects[4], &ends) == 0 && expect_items(&ends, 8, "ends") == 0;
    if (valid && rowbase.len != output.len) {
        PyErr_SetString(PyExc_ValueError, "rowbase and output must have one item per state");
        valid = 0;
    }
    PyObject *result = NULL;
    if (valid) {
        Automaton automaton = {
            nextmove.buf, nextmove.len / 4, rowbase.buf, output.buf, output.len / 4,
        };
        int64_t *keys = NULL;
        size_t found = 0;
        enum walk_outcome outcome;
        Py_BEGIN_ALLOW_THREADS
        outcome = walk_all(&automaton, data.buf, data.len, ends.buf, ends.len / 8, &keys, &found);
        Py_END_ALLOW_THREADS
        switch (outcome) {
        case WALKED:
            result = PyBytes_FromStringAndSize((const char *)keys, (Py_ssize_t)(found * sizeof(int64_t)));
            break;
        case WALK_OUT_OF_MEMORY:
            PyErr_NoMemory();
            break;
        case BAD_TABLES:
            PyErr_SetString(PyExc_ValueError, "the automaton's tables point outside themselves");
            break;
        case BAD_ENDS:
            PyErr_SetString(PyExc_ValueError, "ends must rise and stay within data");
            break;
        }
        free(keys);
    }
    PyBuffer_Release(&nextmove);
    PyBuffer_Release(&rowbase);
    PyBuffer_Release(&output);
    PyBuffer_Release(&data);
    PyBuffer_Release(&ends);
    return result;
}

PyDoc_STRVAR(
    count_doc,
    "count(codes, documents, bits, orders, words, word_pairs) -> (keys, counts)\n"
    "\n"
    "Distinct hashed n-grams of each document, with their counts.\n"
    "\n"
    "codes: native uint32 code points of the documents, each framed by spaces, joined by U+0000.\n"
    "documents: how many documents codes holds. bits: buckets per block are 2**bits (8..24).\n"
    "orders: character n-gram lengths (1..8), one byte each. words, word_pairs: count words and\n"
    "pairs of consecutive words (block 1).\n"
    "\n"
    "Returns int64 keys (document << (bits + 1) | block << bits | bucket), documents ascending\n"
    "and buckets ascending within a block, and the float32 counts, each as bytes.\n"
);

PyDoc_STRVAR(
    score_doc,
    "score(codes, documents, bits, orders, words, word_pairs, idf, weights, columns) -> scores\n"
    "\n"
    "The documents' TF-IDF features times a weight matrix, without building the features:\n"
    "Features.matrix(idf) @ weights, as router/features.py defines them, counted as count does.\n"
    "\n"
    "The first six arguments are count's. idf: native float32, one per bucket (2**bits).\n"
    "weights: C-contiguous native float32, 2**bits rows of columns (at least 1).\n"
    "\n"
    "Returns the float32 documents x columns scores, row after row, as bytes.\n"
);

PyDoc_STRVAR(
    walk_doc,
    "walk(nextmove, rowbase, output, data, ends) -> keys\n"
    "\n"
    "The features a byte automaton (py3langid's) reaches in each of several texts.\n"
    "\n"
    "nextmove: uint32 next state per (row base + byte). rowbase: uint32 row base per state.\n"
    "output: int32 feature per state, -1 for none. data: the texts' bytes, concatenated.\n"
    "ends: int64 end offset of each text in data, rising.\n"
    "\n"
    "Returns int64 keys (text << 32 | feature), one per feature reached, texts in order, as bytes.\n"
);

static PyMethodDef methods[] = {
    {"count", (PyCFunction)(void (*)(void))count, METH_VARARGS | METH_KEYWORDS, count_doc},
    {"score", (PyCFunction)(void (*)(void))score, METH_VARARGS | METH_KEYWORDS, score_doc},
    {"walk", (PyCFunction)(void (*)(void))walk, METH_VARARGS | METH_KEYWORDS, walk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "router._ngrams",
    "The featurizer's n-gram counter and scorer, and a byte automaton walk, in C (see router/).",
    0,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__ngrams(void) { return PyModule_Create(&module); }
