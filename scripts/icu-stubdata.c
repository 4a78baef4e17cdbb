/* An empty ICU data library for the sidecar image (Dockerfile), after ICU's own
 * stubdata/stubdata.cpp: the header of a common data file with no entries,
 * under the name libicuuc 72 looks for. libbcc links LLVM, LLVM links libxml2,
 * libxml2 links ICU, and only for converting charsets that LLVM's manifest tool
 * reads; nothing in the sidecar calls it. ICU then finds no data and answers
 * U_FILE_ACCESS_ERROR, as it does with its own stub, instead of the 31 MB
 * libicudata.so.72 being carried for nothing. */
#include <stdint.h>

typedef struct {
    uint16_t size;
    uint16_t reservedWord;
    uint8_t isBigEndian;
    uint8_t charsetFamily;
    uint8_t sizeofUChar;
    uint8_t reservedByte;
    uint8_t dataFormat[4];
    uint8_t formatVersion[4];
    uint8_t dataVersion[4];
} UDataInfo;

typedef struct {
    uint16_t headerSize;
    uint8_t magic1, magic2;
    UDataInfo info;
    char padding[8];
    uint32_t count, reserved;
    uint64_t fakeNameAndData[2];
} ICU_Data_Header;

__attribute__((visibility("default"))) const ICU_Data_Header icudt72_dat = {
    32,
    0xda,
    0x27,
    {sizeof(UDataInfo), 0, 0 /* little-endian */, 0 /* ASCII */, 2, 0,
     {0x43, 0x6d, 0x6e, 0x44} /* "CmnD" */, {1, 0, 0, 0}, {0, 0, 0, 0}},
    {0, 0, 0, 0, 0, 0, 0, 0},
    0,
    0,
    {0, 0},
};
