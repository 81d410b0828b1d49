; The bundled default disk image (firmware/default.img): a 64 KiB raw disk.
;
;   sector 0      mbr.asm     boot sector, loaded by the BIOS at 0000:7C00
;   sectors 1..n  stage2.asm  loaded by the MBR at 0000:8000
;   rest          zeros
;
; Assemble: nasm -f bin -I firmware/guest/ -o default.img firmware/guest/default.asm
; Define FORCE_CHS (-DFORCE_CHS) to build an MBR that skips the INT 13h
; extensions and loads stage 2 with AH=02h (CHS); used by the tests.

%define IMAGE_SIZE 65536
STAGE2_ADDR equ 0x8000

section mbr start=0 vstart=0x7C00
%include "mbr.asm"

section stage2 follows=mbr vstart=STAGE2_ADDR
stage2_start:
%include "stage2.asm"
stage2_end:
        ; stage 2 must end below the page tables it builds at 10000h
        times 0 - ((stage2_end - stage2_start) > (0x10000 - STAGE2_ADDR)) db 0
        times IMAGE_SIZE - 512 - ($ - $$) db 0

STAGE2_SECTORS equ (stage2_end - stage2_start + 511) / 512
