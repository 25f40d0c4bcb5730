// teal dashboard script
"use strict";
