/* SPDX-License-Identifier: MIT */

/* Subscriptions to a fill and the delivery of its news: coalesced, from the Fetcher's defer source, so
 * that nothing a caller does calls back into it synchronously. */

#include <stdlib.h>

#include "fill-internal.h"

bool fill_streams(const Fill *f) {
        for (FillSubscription *s = f->subs; s; s = s->next)
                if (!s->dead && !s->listener.requires_kept)
                        return true;
        return false;
}

static void subscription_unlink(FillSubscription *s) {
        Fill *f = s->fill;
        if (s->prev)
                s->prev->next = s->next;
        else
                f->subs = s->next;
        if (s->next)
                s->next->prev = s->prev;
        else
                f->subs_tail = s->prev;
        s->prev = s->next = NULL;
}

static void subscription_destroy(FillSubscription *s) {
        Fill *f = s->fill;
        subscription_unlink(s);
        free(s);
        fill_unref(f);
}

static void subscription_notify(FillSubscription *s, bool headers, bool data, bool final) {
        Fill *f = s->fill;

        if (headers && !s->headers_sent) {
                s->headers_sent = true;
                if (s->listener.on_headers)
                        s->listener.on_headers(f, s->userdata);
        }
        if (!s->dead && data && !final && s->listener.on_data)
                s->listener.on_data(f, s->userdata);
        if (!s->dead && final && !s->finished_sent) {
                s->finished_sent = true;
                if (s->listener.on_finished)
                        s->listener.on_finished(f, s->userdata);
        }
}

/* A fill too large to keep is only worth its transfer while someone reads it. */
static void fill_cancel_unread(Fill *f) {
        if (f->too_large && !fill_state_is_final(fill_state(f)) && !fill_streams(f))
                fill_cancel_for(f, "its last reader left, and it is too large to keep");
}

void fill_dispatch(Fill *f) {
        fill_ref(f);
        f->n_dispatching++;
        bool data = f->data_pending;
        f->data_pending = false;
        bool headers = fill_has_headers(f);
        bool final = fill_state_is_final(fill_state(f));

        /* Subscriptions added by a listener are appended and seen in this same pass. */
        for (FillSubscription *s = f->subs; s; s = s->next)
                if (!s->dead)
                        subscription_notify(s, headers, data, final);
        if (final && !f->observer_finished && f->fetcher) {
                f->observer_finished = true;
                fetcher_tell_finished(f->fetcher, f);
        }

        if (--f->n_dispatching == 0) {
                for (FillSubscription *s = f->subs, *next; s; s = next) {
                        next = s->next;
                        if (s->dead)
                                subscription_destroy(s);
                }
                fill_cancel_unread(f); /* not under an outer dispatch, which still walks the list */
        }
        fill_unref(f);
}

void fill_schedule(Fill *f) {
        Fetcher *fe = f->fetcher;
        if (!fe || f->notify_queued)
                return;
        f->notify_queued = true;
        g_queue_push_tail(&fe->notify, fill_ref(f));
        if (!fe->freeing)
                (void) sd_event_source_set_enabled(fe->dispatch, SD_EVENT_ONESHOT);
}

int fill_subscribe(Fill *f, const FillListener *l, void *userdata, FillSubscription **ret) {
        FillSubscription *s = calloc(1, sizeof(FillSubscription));
        if (!s)
                return -ENOMEM;
        *s = (FillSubscription) {
                .fill = fill_ref(f),
                .listener = *l,
                .userdata = userdata,
                .prev = f->subs_tail,
        };
        if (f->subs_tail)
                f->subs_tail->next = s;
        else
                f->subs = s;
        f->subs_tail = s;

        /* A late subscriber still hears about headers already accepted and about the end. */
        if (fill_has_headers(f))
                fill_schedule(f);
        *ret = s;
        return 0;
}

FillSubscription *fill_subscription_free(FillSubscription *s) {
        Fill *f;

        if (!s)
                return NULL;
        f = s->fill;
        if (f->n_dispatching > 0) {
                s->dead = true; /* unlinked once the dispatch is over */
                return NULL;
        }
        /* The last reader of a fill too large to keep: the dispatch, not this caller, cancels it. */
        if (f->too_large && !s->listener.requires_kept)
                fill_schedule(f);
        subscription_destroy(s);
        return NULL;
}

void fill_subscription_consumed(FillSubscription *s, uint64_t offset) {
        Fill *f = s->fill;
        uint64_t floor = UINT64_MAX;

        s->position = MAX(s->position, offset);
        if (!f->too_large || !f->writer)
                return;
        for (FillSubscription *t = f->subs; t; t = t->next)
                if (!t->dead && !t->listener.requires_kept)
                        floor = MIN(floor, t->position);
        if (floor != UINT64_MAX)
                fill_writer_set_floor(f->writer, floor);
}

uint64_t fill_readable_from(const Fill *f) {
        return f->too_large && f->writer ? fill_writer_start(f->writer) : 0;
}
