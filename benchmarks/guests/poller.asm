; A guest that waits by polling devices, as firmware and early kernels do:
; the RTC's seconds register until it changes (one second after an RTC
; start on a whole second), the PIT's channel 2 output through read-back
; status until a 50 ms one-shot ends, the i8042 status until its self-test
; answers.  Reports the self-test reply (0x55), the same under both clocks.
%include "prologue.inc"
main:
    mov al, 0
    out 0x70, al
    in al, 0x71
    mov bl, al
.rtc:
    mov al, 0
    out 0x70, al
    in al, 0x71
    cmp al, bl
    je .rtc
    mov al, 1                 ; channel 2 gate on, speaker off
    out 0x61, al
    mov al, 0xB0              ; channel 2, lobyte/hibyte, mode 0
    out 0x43, al
    mov ax, 59659             ; 50 ms
    out 0x42, al
    mov al, ah
    out 0x42, al
.pit:
    mov al, 0xE8              ; read-back: latch channel 2's status
    out 0x43, al
    in al, 0x42
    test al, 0x80
    jz .pit
    mov al, 0xAA              ; i8042 controller self-test
    out 0x64, al
.kbc:
    in al, 0x64
    test al, 1
    jz .kbc
    in al, 0x60
    movzx eax, al
    jmp report
