//! Labelled photo collections. One loader per layout, all producing [`Sample`]s:
//!
//! - [`Layout::Inshop`]: DeepFashion In-shop as distributed: `img/<GENDER>/<Category>/<item>/<NN>_<k>_<pose>.jpg`
//!   and `Anno/list_eval_partition.txt` (`train` is the training split; `query` and `gallery` are
//!   validation). Labels `category` and `view`.
//! - [`Layout::Fpi`]: Fashion Product Images as distributed: `images/<id>.jpg` and `styles.csv`.
//!   Labels `article_type` and `colour_family` (the `baseColour` mapped to 12 families + multi by
//!   `data/fpi_colour_families.csv`); footwear and accessories also get a `category` from
//!   `data/fpi_categories.csv`, so that one category list covers clothes (In-shop's 17
//!   categories), shoes, bags and accessories. FPI clothes get no `category`: their article types
//!   do not map one-to-one onto In-shop's categories. The split comes from a `manifest.csv` beside `styles.csv` when
//!   it has one, otherwise from a hash of the product id (1 in 10 to validation).
//! - [`Layout::Csv`]: a CSV file with a `path` column (relative to the CSV's folder) and any of
//!   `category`, `view`, `article_type`, `colour_family`, `split`, `group`. Without `split`, a
//!   hash of the `group` (else of the path) sends 1 in 10 to validation.
//! - [`Layout::Folders`]: `<root>/{train,val}/<class>/*.jpg`, or `<root>/<class>/*.jpg` (or
//!   `<root>/train/<class>/*.jpg` alone) split by a hash of `<class>/<file name>` (1 in 10 to
//!   validation, as a CSV without a `split` column). Label `category`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// The label keys the built-in heads use.
pub const CATEGORY: &str = "category";
pub const VIEW: &str = "view";
pub const ARTICLE_TYPE: &str = "article_type";
pub const COLOUR_FAMILY: &str = "colour_family";

/// Which side of the train/validation split a photo is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

/// One labelled photo.
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: PathBuf,
    pub split: Split,
    /// The product the photo shows (several photos per product).
    pub group: Option<String>,
    /// Head name -> label.
    pub labels: BTreeMap<String, String>,
    /// Other facts a report can filter on (e.g. `master_category`).
    pub attrs: BTreeMap<String, String>,
    /// A human-parsing mask of the photo (LIP/CIHP palette), where the dataset has one.
    pub mask: Option<PathBuf>,
}

/// A dataset's folder layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Inshop,
    Fpi,
    Csv,
    Folders,
}

impl std::str::FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "inshop" => Ok(Layout::Inshop),
            "fpi" => Ok(Layout::Fpi),
            "csv" => Ok(Layout::Csv),
            "folders" => Ok(Layout::Folders),
            other => Err(Error::InvalidArgument(format!(
                "unknown layout {other:?}: expected inshop, fpi, csv or folders"
            ))),
        }
    }
}

/// A loaded dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: Layout,
    pub samples: Vec<Sample>,
}

impl Dataset {
    /// Loads the dataset at `path` (a folder, or a CSV file for [`Layout::Csv`]).
    pub fn load(path: &Path, layout: Layout) -> Result<Dataset> {
        let samples = match layout {
            Layout::Inshop => load_inshop(path)?,
            Layout::Fpi => load_fpi(path)?,
            Layout::Csv => load_csv(path)?,
            Layout::Folders => load_folders(path)?,
        };
        if samples.is_empty() {
            return Err(Error::bad_data(path, "no labelled photos found"));
        }
        let root = if layout == Layout::Csv {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        Ok(Dataset {
            root,
            layout,
            samples,
        })
    }

    /// The samples of one split (`None` = all).
    pub fn split(&self, split: Option<Split>) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| split.is_none_or(|want| s.split == want))
            .collect()
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn load_inshop(root: &Path) -> Result<Vec<Sample>> {
    let part = root.join("Anno/list_eval_partition.txt");
    let text = read_to_string(&part)?;
    let mut lines = text.lines();
    let count: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| Error::bad_data(&part, "first line must be the number of images"))?;
    lines.next(); // header: image_name item_id evaluation_status
    let mut out = Vec::with_capacity(count);
    for (i, line) in lines.enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let err = |m: &str| Error::bad_data(&part, format!("line {}: {m}", i + 3));
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, item, status] = f[..] else {
            return Err(err("expected `image_name item_id evaluation_status`"));
        };
        let split = match status {
            "train" => Split::Train,
            "query" | "gallery" => Split::Val,
            _ => return Err(err("status must be train, query or gallery")),
        };
        // img/<GENDER>/<Category>/<item>/<NN>_<k>_<pose>.jpg
        let parts: Vec<&str> = name.split('/').collect();
        if parts.len() != 5 {
            return Err(err(
                "image name must be img/GENDER/Category/item/NN_k_pose.jpg",
            ));
        }
        let stem = parts[4].rsplit_once('.').map_or(parts[4], |(s, _)| s);
        let pose = stem.rsplit('_').next().unwrap_or_default();
        let view = match pose {
            "front" | "side" | "back" | "full" | "flat" => pose,
            "additional" => "detail",
            _ => return Err(err("unknown pose")),
        };
        let mut labels = BTreeMap::new();
        labels.insert(CATEGORY.to_string(), parts[2].to_string());
        labels.insert(VIEW.to_string(), view.to_string());
        let mut attrs = BTreeMap::new();
        attrs.insert("gender".to_string(), parts[1].to_string());
        out.push(Sample {
            path: root.join(name),
            split,
            // An item id can be reused across gender and category folders; the folder is the
            // product.
            group: Some(format!("{}/{}/{item}", parts[1], parts[2])),
            labels,
            attrs,
            // The parsing masks, where present, mirror `img/` under `seg/` as PNG.
            mask: Some(
                root.join("seg")
                    .join(parts[1..].join("/"))
                    .with_extension("png"),
            )
            .filter(|m| m.is_file()),
        });
    }
    if out.len() != count {
        return Err(Error::bad_data(
            &part,
            format!("says {count} images but lists {}", out.len()),
        ));
    }
    Ok(out)
}

/// FPI `baseColour` -> colour family (12 families + `multi`); `None` for `NA`.
pub fn fpi_colour_family(base: &str) -> Option<&'static str> {
    static MAP: std::sync::OnceLock<HashMap<&'static str, &'static str>> =
        std::sync::OnceLock::new();
    let map = MAP.get_or_init(|| {
        include_str!("../data/fpi_colour_families.csv")
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(','))
            .filter(|(_, f)| !f.is_empty())
            .collect()
    });
    map.get(base).copied()
}

/// FPI (`masterCategory`, `subCategory`) -> shop category, for footwear and accessories.
pub fn fpi_category(master: &str, sub: &str) -> Option<&'static str> {
    static MAP: std::sync::OnceLock<HashMap<(&'static str, &'static str), &'static str>> =
        std::sync::OnceLock::new();
    let map = MAP.get_or_init(|| {
        include_str!("../data/fpi_categories.csv")
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.splitn(3, ',');
                Some(((f.next()?, f.next()?), f.next()?))
            })
            .collect()
    });
    map.get(&(master, sub)).copied()
}

fn hash_split(key: &str) -> Split {
    if crate::hash::of(key.as_bytes()).is_multiple_of(10) {
        Split::Val
    } else {
        Split::Train
    }
}

fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|e| Error::bad_data(path, e.to_string()))
}

fn load_fpi(root: &Path) -> Result<Vec<Sample>> {
    let styles = root.join("styles.csv");
    let manifest = root.join("manifest.csv");
    let mut splits = HashMap::new();
    if manifest.is_file() {
        let mut r = csv_reader(&manifest)?;
        let h = r
            .headers()
            .map_err(|e| Error::bad_data(&manifest, e.to_string()))?
            .clone();
        let (Some(id), Some(split)) = (
            h.iter().position(|c| c == "id"),
            h.iter().position(|c| c == "split"),
        ) else {
            return Err(Error::bad_data(&manifest, "needs `id` and `split` columns"));
        };
        for rec in r.records() {
            let rec = rec.map_err(|e| Error::bad_data(&manifest, e.to_string()))?;
            let s = parse_split(&rec[split]).map_err(|m| Error::bad_data(&manifest, m))?;
            splits.insert(rec[id].to_string(), s);
        }
    }
    let mut r = csv_reader(&styles)?;
    let h = r
        .headers()
        .map_err(|e| Error::bad_data(&styles, e.to_string()))?
        .clone();
    let col = |name: &str| {
        h.iter()
            .position(|c| c == name)
            .ok_or_else(|| Error::bad_data(&styles, format!("no `{name}` column")))
    };
    let (id, master, sub, article, colour, gender) = (
        col("id")?,
        col("masterCategory")?,
        col("subCategory")?,
        col("articleType")?,
        col("baseColour")?,
        col("gender")?,
    );
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| Error::bad_data(&styles, e.to_string()))?;
        let pid = rec[id].to_string();
        let path = root.join("images").join(format!("{pid}.jpg"));
        if !path.is_file() {
            continue; // styles.csv lists products whose photo the download lacks
        }
        let mut labels = BTreeMap::new();
        labels.insert(ARTICLE_TYPE.to_string(), rec[article].to_string());
        if let Some(f) = fpi_colour_family(&rec[colour]) {
            labels.insert(COLOUR_FAMILY.to_string(), f.to_string());
        }
        if let Some(c) = fpi_category(&rec[master], &rec[sub]) {
            labels.insert(CATEGORY.to_string(), c.to_string());
        }
        let mut attrs = BTreeMap::new();
        attrs.insert("master_category".to_string(), rec[master].to_string());
        attrs.insert("sub_category".to_string(), rec[sub].to_string());
        attrs.insert("gender".to_string(), rec[gender].to_string());
        attrs.insert("base_colour".to_string(), rec[colour].to_string());
        let split = splits
            .get(&pid)
            .copied()
            .unwrap_or_else(|| hash_split(&pid));
        out.push(Sample {
            path,
            split,
            group: Some(pid),
            labels,
            attrs,
            mask: None,
        });
    }
    Ok(out)
}

fn parse_split(s: &str) -> std::result::Result<Split, String> {
    match s {
        "train" => Ok(Split::Train),
        "val" | "valid" | "validation" | "test" => Ok(Split::Val),
        other => Err(format!("unknown split {other:?} (expected train or val)")),
    }
}

fn load_csv(file: &Path) -> Result<Vec<Sample>> {
    let root = file.parent().unwrap_or(Path::new("."));
    let mut r = csv_reader(file)?;
    let h = r
        .headers()
        .map_err(|e| Error::bad_data(file, e.to_string()))?
        .clone();
    let path_col = h
        .iter()
        .position(|c| c == "path")
        .ok_or_else(|| Error::bad_data(file, "no `path` column"))?;
    let pos = |name: &str| h.iter().position(|c| c == name);
    let (split_col, group_col) = (pos("split"), pos("group"));
    let label_cols: Vec<(String, usize)> = [CATEGORY, VIEW, ARTICLE_TYPE, COLOUR_FAMILY]
        .iter()
        .filter_map(|l| pos(l).map(|i| (l.to_string(), i)))
        .collect();
    if label_cols.is_empty() {
        return Err(Error::bad_data(
            file,
            "no label column (category, view, article_type or colour_family)",
        ));
    }
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| Error::bad_data(file, e.to_string()))?;
        let rel = &rec[path_col];
        let split = match split_col {
            Some(c) => parse_split(&rec[c])
                .map_err(|m| Error::bad_data(file, format!("row {}: {m}", i + 2)))?,
            // By product where the CSV says which photos show one, so that no product is
            // both learnt and measured on.
            None => match group_col.map(|c| &rec[c]).filter(|g| !g.is_empty()) {
                Some(group) => hash_split(group),
                None => hash_split(rel),
            },
        };
        let labels = label_cols
            .iter()
            .filter(|(_, c)| !rec[*c].is_empty())
            .map(|(l, c)| (l.clone(), rec[*c].to_string()))
            .collect();
        out.push(Sample {
            path: root.join(rel),
            split,
            group: group_col.map(|c| rec[c].to_string()),
            labels,
            attrs: BTreeMap::new(),
            mask: None,
        });
    }
    Ok(out)
}

/// Whether the file name has a photo extension this library decodes.
pub fn is_photo(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| {
            matches!(
                e.to_ascii_lowercase().as_str(),
                "jpg" | "jpeg" | "png" | "webp" | "gif" | "bmp" | "tif" | "tiff"
            )
        })
        .unwrap_or(false)
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn load_folders(root: &Path) -> Result<Vec<Sample>> {
    let (train, val) = (root.join("train"), root.join("val"));
    // `None`: the split comes from a hash of the photo's path under the class folder.
    let parts: Vec<(PathBuf, Option<Split>)> = if train.is_dir() && val.is_dir() {
        vec![(train, Some(Split::Train)), (val, Some(Split::Val))]
    } else if train.is_dir() {
        vec![(train, None)]
    } else {
        vec![(root.to_path_buf(), None)]
    };
    let mut out = Vec::new();
    for (dir, given) in parts {
        for class_dir in sorted_dir(&dir)?.into_iter().filter(|p| p.is_dir()) {
            let class = class_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            for p in sorted_dir(&class_dir)?
                .into_iter()
                .filter(|p| p.is_file() && is_photo(p))
            {
                let split = given.unwrap_or_else(|| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    hash_split(&format!("{class}/{name}"))
                });
                out.push(Sample {
                    path: p,
                    split,
                    group: None,
                    labels: BTreeMap::from([(CATEGORY.to_string(), class.clone())]),
                    attrs: BTreeMap::new(),
                    mask: None,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fpi_base_colour_has_a_family() {
        let lines: Vec<&str> = include_str!("../data/fpi_colour_families.csv")
            .lines()
            .skip(1)
            .collect();
        assert_eq!(lines.len(), 44);
        assert_eq!(fpi_colour_family("Navy Blue"), Some("blue"));
        assert_eq!(fpi_colour_family("Maroon"), Some("red"));
        assert_eq!(fpi_colour_family("Multi"), Some("multi"));
        assert_eq!(fpi_colour_family("NA"), None);
        let families = [
            "black", "white", "grey", "red", "pink", "orange", "yellow", "green", "blue", "purple",
            "brown", "beige", "multi",
        ];
        for l in lines {
            let (_, f) = l.split_once(',').unwrap();
            assert!(f.is_empty() || families.contains(&f), "{l}");
        }
    }

    #[test]
    fn fpi_base_colours_named_in_the_vocabulary_keep_its_family() {
        // A garment FPI calls cream must count as right when the palette calls it cream.
        let vocab = crate::colour::Vocabulary::default();
        let mut shared = 0;
        for l in include_str!("../data/fpi_colour_families.csv")
            .lines()
            .skip(1)
        {
            let (base, family) = l.split_once(',').unwrap();
            let Some(c) = vocab
                .colours
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(base))
            else {
                continue;
            };
            assert_eq!(c.family, family, "{base}");
            shared += 1;
        }
        assert!(shared >= 25, "only {shared} base colours in the vocabulary");
        assert_eq!(fpi_colour_family("Cream"), Some("white"));
        assert_eq!(fpi_colour_family("Off White"), Some("white"));
    }

    #[test]
    fn fpi_footwear_and_accessories_get_a_shop_category() {
        assert_eq!(fpi_category("Footwear", "Shoes"), Some("Shoes"));
        assert_eq!(
            fpi_category("Accessories", "Mufflers"),
            Some("Scarves_Stoles")
        );
        assert_eq!(fpi_category("Apparel", "Topwear"), None);
    }

    #[test]
    fn inshop_native_layout_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("Anno")).unwrap();
        std::fs::write(
            dir.path().join("Anno/list_eval_partition.txt"),
            "3\nimage_name item_id evaluation_status\n\
             img/MEN/Denim/id_1/01_1_front.jpg id_1 train\n\
             img/MEN/Denim/id_2/01_7_additional.jpg id_2 query\n\
             img/WOMEN/Dresses/id_3/02_2_side.jpg id_3 gallery\n",
        )
        .unwrap();
        // One photo has a parsing mask, beside `img/` under `seg/`.
        let seg = dir.path().join("seg/WOMEN/Dresses/id_3/02_2_side.png");
        std::fs::create_dir_all(seg.parent().unwrap()).unwrap();
        std::fs::write(&seg, b"png").unwrap();
        let d = Dataset::load(dir.path(), Layout::Inshop).unwrap();
        assert_eq!(d.samples.len(), 3);
        assert_eq!(d.samples[2].mask.as_deref(), Some(seg.as_path()));
        assert_eq!(d.samples[0].mask, None);
        assert_eq!(d.samples[0].split, Split::Train);
        assert_eq!(d.samples[1].labels[VIEW], "detail");
        assert_eq!(d.samples[2].labels[CATEGORY], "Dresses");
        assert_eq!(d.samples[2].split, Split::Val);
        assert_eq!(d.samples[2].group.as_deref(), Some("WOMEN/Dresses/id_3"));
    }

    #[test]
    fn class_folders_without_a_val_folder_keep_one_in_ten_photos_for_validation() {
        let write = |root: &Path, sub: &str| {
            for class in ["Dresses", "Jeans"] {
                let dir = root.join(sub).join(class);
                std::fs::create_dir_all(&dir).unwrap();
                for i in 0..100 {
                    std::fs::write(dir.join(format!("{i:03}.jpg")), b"jpg").unwrap();
                }
            }
        };
        let splits = |root: &Path| {
            let d = Dataset::load(root, Layout::Folders).unwrap();
            let classes: std::collections::BTreeSet<&str> = d
                .samples
                .iter()
                .map(|s| s.labels[CATEGORY].as_str())
                .collect();
            assert_eq!(classes, ["Dresses", "Jeans"].into());
            let val: Vec<String> = d
                .samples
                .iter()
                .filter(|s| s.split == Split::Val)
                .map(|s| s.path.strip_prefix(root).unwrap().display().to_string())
                .collect();
            (d.samples.len(), val)
        };
        // Flat, and under `train/` alone: the same photos go to validation.
        let (flat, only_train) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(flat.path(), "");
        write(only_train.path(), "train");
        let (n, val) = splits(flat.path());
        assert_eq!(n, 200);
        assert!((8..=35).contains(&val.len()), "{} of 200", val.len());
        for class in ["Dresses/", "Jeans/"] {
            assert!(val.iter().any(|p| p.starts_with(class)), "{val:?}");
        }
        let (n2, val2) = splits(only_train.path());
        assert_eq!(n2, 200);
        let under_train: Vec<String> = val.iter().map(|p| format!("train/{p}")).collect();
        assert_eq!(val2, under_train);
        // `train/` and `val/`: as given.
        let given = tempfile::tempdir().unwrap();
        write(given.path(), "train");
        write(given.path(), "val");
        let (n, val) = splits(given.path());
        assert_eq!(n, 400);
        assert_eq!(val.len(), 200);
        assert!(val.iter().all(|p| p.starts_with("val/")));
    }

    #[test]
    fn a_csv_without_a_split_keeps_each_products_photos_on_one_side() {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("path,category,group\n");
        for product in 0..60 {
            for photo in 0..4 {
                csv += &format!("p{product}_{photo}.jpg,Dresses,p{product}\n");
            }
        }
        csv += "loose.jpg,Dresses,\n";
        let file = dir.path().join("photos.csv");
        std::fs::write(&file, csv).unwrap();
        let d = Dataset::load(&file, Layout::Csv).unwrap();
        assert_eq!(d.samples.len(), 241);
        let mut sides: BTreeMap<&str, Vec<Split>> = BTreeMap::new();
        for s in &d.samples[..240] {
            sides
                .entry(s.group.as_deref().unwrap())
                .or_default()
                .push(s.split);
        }
        assert!(
            sides.values().all(|v| v.iter().all(|s| *s == v[0])),
            "{sides:?}"
        );
        let val = sides.values().filter(|v| v[0] == Split::Val).count();
        assert!((1..20).contains(&val), "{val} of 60 products in validation");
        // Without a group, the photo's path decides, as it always has.
        assert_eq!(d.samples[240].split, hash_split("loose.jpg"));
    }
}
