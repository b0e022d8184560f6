/* SPDX-License-Identifier: MIT */
/* The rules of src/shared/image-id.c, for instant feedback in the form. The daemon stays the judge: the page
 * always sends the id and shows the daemon's own refusal as well. Keep the two in step. */
"use strict";

const ImageId = (function () {
    const MAX = 128;
    const RESERVED = ["cache.db", "cache.db-journal", "cache.db-shm", "cache.db-wal", "incomplete", "invalid",
                      "queue"];

    function byteOk(b) {
        return (b >= 0x61 && b <= 0x7a) || (b >= 0x41 && b <= 0x5a) || (b >= 0x30 && b <= 0x39) ||
               b === 0x2e || b === 0x5f || b === 0x2d;
    }

    /* null when the id is valid, else the reason, worded as the daemon words it. */
    function invalidReason(id) {
        if (!id)
            return "an image id must not be empty";
        if (id[0] === ".")
            return "an image id must not start with '.'";
        /* Byte by byte, as the daemon reads it: the length counts UTF-8 bytes and the first fault wins. */
        const bytes = new TextEncoder().encode(id);
        for (let i = 0; i < bytes.length; i++) {
            if (i >= MAX)
                return "an image id must be at most 128 characters long";
            if (!byteOk(bytes[i]))
                return "an image id may contain only letters, digits, '.', '_' and '-'";
        }
        if (RESERVED.includes(id))
            return "this name is reserved for the cache directory's own files";
        return null;
    }

    return { invalidReason };
}());

if (typeof module !== "undefined")
    module.exports = ImageId;
